"""Issue #17 round two, prepared on a CPU: the pieces `bash benchmarks/device_run.sh round2` runs on a
GPU — the kernel-profile mode, the official-code harness (present and absent), the data-included
variant on real JPEG shards, the v1 parity run with its plot, regional compilation, and the device
script's own commands — at tiny sizes."""
from __future__ import annotations

import csv
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stargan.bench.official import OfficialCodeMissing
from stargan.bench.runners import ShardData
from stargan.bench.train import OFFICIAL_VARIANT, VARIANTS, _paper_cfg, bench_train

REPO = Path(__file__).resolve().parents[1]
TINY_V1 = dict(image_size=16, batch_size=2, iters=5, warmup=1, device="cpu", log=lambda s: None)


@pytest.fixture(scope="module")
def official_src(tmp_path_factory) -> Path:
    """benchmarks/official/src as fetch.sh writes it (run here into a temp folder when the mirrors
    or the network allow; skipped otherwise)."""
    shipped = REPO / "benchmarks" / "official" / "src"
    if (shipped / "stargan_v2" / "core" / "solver.py").is_file():
        return shipped
    out = tmp_path_factory.mktemp("official") / "src"
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "official" / "fetch.sh")], env={**os.environ,
                          "OUT_DIR": str(out)}, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.skip(f"official code could not be fetched (no git mirrors, no network): {proc.stderr[-300:]}")
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Tiny JPEG shards in the shard stage's format (3 binary labels, 16 px)."""
    from stargan.bench.data import write_aligned_set
    from stargan.config import ShardConfig
    from stargan.data.shards import write_shards

    root = tmp_path_factory.mktemp("shards")
    aligned = write_aligned_set(root / "aligned", n=48, image_size=16, split="train")
    write_shards(aligned, root / "toy", ShardConfig(image_format="jpeg", rows_per_group=8), name="toy")
    return root / "toy"


def _finite(d: dict) -> bool:
    return all(math.isfinite(v) for k, v in d.items() if isinstance(v, float))


# ------------------------------------------------------------------------------ kernel profile

def test_profile_mode_writes_a_table_of_top_ops_and_phases_on_cpu(tmp_path):
    prof = tmp_path / "profile.json"
    result = bench_train("v1", variants=["eager"], out=tmp_path / "r.json", profile_iters=2, profile_out=prof,
                         **TINY_V1)
    doc = json.loads(prof.read_text())
    assert doc["model"] == "v1" and doc["environment"] == result["environment"]
    table = doc["variants"]["eager"]
    assert table["iterations"] == 5                       # rounded up to a whole block (n_critic 5)
    assert "CPU" in table["ranked_by"] and len(table["top"]) > 5
    assert table["top"][0]["self_ms_per_iter"] >= table["top"][-1]["self_ms_per_iter"] > 0
    assert sum(r["share"] for r in table["top"]) <= 1.0 + 1e-6
    assert {"D_main", "D_gp", "D_backward", "G_main", "G_rec"} <= {p["name"] for p in table["phases"]}
    assert "profile" not in result["variants"]["eager"]   # the table lives in the profile file


# ------------------------------------------------------------------------------ official code

def test_official_variant_without_the_files_fails_naming_fetch_sh(tmp_path, capsys):
    with pytest.raises(OfficialCodeMissing, match=r"benchmarks/official/fetch\.sh"):
        bench_train("v1", variants=["eager", OFFICIAL_VARIANT], official_src=tmp_path / "absent", **TINY_V1)
    from stargan.cli import main

    rc = main(["bench", "train", "--model", "v2", "--variants", "official", "--official-src",
               str(tmp_path / "absent"), "--out", str(tmp_path / "r.json"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "fetch.sh" in err[0] and "stargan_v2/core" in err[0]
    assert not (tmp_path / "r.json").exists()            # nothing timed before the check


def test_official_v1_iteration_runs_their_files_beside_ours(official_src):
    result = bench_train("v1", variants=["eager", OFFICIAL_VARIANT], official_src=official_src, **TINY_V1)
    official = result["variants"][OFFICIAL_VARIANT]
    assert official["ms_per_iter"] > 0 and "speedup_vs_eager" in official
    assert {"D/loss_gp", "G/loss_rec"} <= set(official["last_step"]) and _finite(official["last_step"])
    assert not any(m in sys.modules for m in ("model", "solver", "core", "core.solver"))


def test_official_v2_iteration_runs_their_files(official_src):
    from stargan.bench import official

    cfg = _paper_cfg("v2", 32, 1, {})          # their G needs >= 32 px; widths are theirs (CPU: ~10 s)
    step, block = official.v2_runner(cfg, torch.device("cpu"), official_src)
    out = step(0)
    assert block == 1 and len(out) == 14 and _finite(out)
    assert {"D/latent/reg", "G/ref/cyc"} <= set(out)
    assert not any(m in sys.modules for m in ("core", "core.model", "core.solver", "core.utils", "metrics.eval"))


# ------------------------------------------------------------------------------ data included

def test_bench_feeds_the_steps_from_real_jpeg_shards(shards, tmp_path):
    data = ShardData(shards, loader_workers=0)
    result = bench_train("v1", variants=["eager", "fp32_graphs"], data=data, out=tmp_path / "r.json",
                         **{**TINY_V1, "batch_size": 4})
    assert "JPEG shards" in result["benchmark"] and str(shards) in result["benchmark"]
    for name in ("eager", "fp32_graphs"):
        r = result["variants"][name]
        assert r["ms_per_iter"] > 0 and _finite(r["last_step"]) and "G/loss" in r["last_step"]
    with pytest.raises(ValueError, match="random device-resident"):
        from stargan.bench.train import run_variant

        run_variant("v1", OFFICIAL_VARIANT, {}, image_size=16, batch_size=4, iters=1, warmup=1,
                    device=torch.device("cpu"), data=data)


def test_parity_run_logs_every_step_and_the_plot_script_draws_it(shards, tmp_path):
    from stargan.bench.parity import v1_parity

    out = tmp_path / "parity.csv"
    summary = v1_parity(shards, out, iters=6, variants=["eager", "fp32_graphs"], image_size=16, batch_size=4,
                        loader_workers=0, device="cpu", log=lambda s: None)
    rows = list(csv.DictReader(out.open()))
    assert [r["variant"] for r in rows] == ["eager"] * 6 + ["fp32_graphs"] * 6
    assert [r["step"] for r in rows[:6]] == [str(s) for s in range(6)]
    assert rows[4]["G/loss"] and not rows[0]["G/loss"]           # G on every 5th step (n_critic 5)
    # same seed, data, targets and GP weights: before any update the two variants see the same losses
    assert float(rows[0]["D/loss"]) == pytest.approx(float(rows[6]["D/loss"]), rel=1e-5)
    assert json.loads(out.with_suffix(".json").read_text()) == summary
    assert "last_tenth_rel_diff_vs_eager" in summary["variants"]["fp32_graphs"]
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "plot_parity.py"), str(out), "--window", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.with_suffix(".png").stat().st_size > 10_000


# ------------------------------------------------------------------------------ regional compile

def test_compile_blocks_compiles_the_residual_blocks_of_g_and_e_only():
    from stargan.config import TrainConfig, V1Config
    from stargan.models import v2 as m2
    from stargan.models.ops import compile_blocks
    from stargan.training.nets import build_v1, build_v2
    from stargan.training.labels import LabelLayout

    cfg = TrainConfig(image_size=16, batch_size=2, compile_blocks=True)
    for k, v in dict(latent_dim=4, style_dim=8, max_conv_dim=16, mapping_hidden=16).items():
        setattr(cfg.v2, k, v)
    nets, _ = build_v2(cfg, 2)

    def compiled(module) -> list[bool]:
        return [getattr(m, "_compiled_call_impl", None) is not None for m in module.modules()
                if isinstance(m, (m2.ResBlk, m2.AdainResBlk))]

    assert compiled(nets.G) and all(compiled(nets.G)) and all(compiled(nets.E))
    assert compiled(nets.D) and not any(compiled(nets.D))         # R1's double backward stays eager
    assert not any(compiled(nets.G_ema))                          # the EMA copies were made before
    v1 = V1Config(g_conv_dim=4, d_conv_dim=4, g_repeat_num=2, d_repeat_num=4)
    v1_nets, _ = build_v1(TrainConfig(image_size=16, v1=v1, compile_blocks=True),
                          LabelLayout([("c", ["a", "b"], "multi")]))
    assert [n for n, m in v1_nets.G.named_modules() if getattr(m, "_compiled_call_impl", None) is not None] == \
        ["main.9", "main.10"]                                     # its two residual blocks
    # a compiled block computes what the block computes (dynamo's eager backend: no C++ build here)
    torch.manual_seed(0)
    G = m2.Generator(16, 8, 16)
    x, s = torch.randn(2, 3, 16, 16), torch.randn(2, 8)
    ref = G(x, s)
    names = compile_blocks(G, (m2.ResBlk, m2.AdainResBlk), backend="eager")
    assert names and all(n.startswith(("encode.", "decode.")) for n in names)
    torch.testing.assert_close(G(x, s), ref)
    torch._dynamo.reset()


# ------------------------------------------------------------------------------ the device script

def test_device_script_round2_commands_parse_and_name_real_variants(tmp_path):
    from stargan.cli import build_parser

    for tiny in ("", "1"):
        proc = subprocess.run(["bash", "benchmarks/device_run.sh", "round2"], cwd=REPO, capture_output=True,
                              text=True, timeout=60, env={**os.environ, "DRY_RUN": "1", "TINY": tiny,
                                                          "OUT": str(tmp_path / "out"), "PYTHON": "python3"})
        assert proc.returncode == 0, proc.stderr
        commands = [shlex.split(line) for line in proc.stdout.splitlines() if "stargan.cli" in line]
        assert len(commands) == 5
        for argv in commands:
            args = build_parser().parse_args(argv[argv.index("stargan.cli") + 1:])
            assert args.func.__name__ in ("cmd_bench_train", "cmd_bench_parity")
            for v in args.variants.split(","):
                assert v in VARIANTS or v == OFFICIAL_VARIANT, v
            assert str(tmp_path / "out") in (args.out or "")
        outs = {Path(build_parser().parse_args(a[a.index("stargan.cli") + 1:]).out).name for a in commands}
        assert len(outs) == 5                       # + the CSV's JSON and round2.log = 7 of the 8 files back
