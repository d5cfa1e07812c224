"""`stargan` command: the user-facing entry points. Parsing only; the work is in the library.

Each subcommand imports what it needs inside its function, so a light one (``check-params``,
``--help``) starts without importing torch, Ray or MLflow (seconds each)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from stargan.config import load_config
from stargan.errors import one_line
from stargan.stage import EXPECTED_ERRORS, QUIET_ENV


def _load(args: argparse.Namespace):
    return load_config(args.params, args.set)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _load(args)
    root = Path(args.params).resolve().parent
    if args.local:
        from stargan.training.local import fit_local

        res = fit_local(cfg, root, device=args.device)
        print(json.dumps({"step": res.step, **res.metrics}, indent=2))
        return 0
    from stargan.training.ray_train import fit

    out = fit(cfg, root)
    print(json.dumps({"checkpoint": str(out.checkpoint), "mlflow_run_id": out.run_id,
                      "tracking_uri": out.tracking_uri, "run_name": out.run_name,
                      "metrics": {k: v for k, v in out.metrics.items() if isinstance(v, (int, float))}}, indent=2))
    return 0


def cmd_bench_data(args: argparse.Namespace) -> int:
    from stargan.bench.data import bench_data

    cfg = _load(args)
    result = bench_data(cfg, Path(args.out), repo_root=Path(args.params).resolve().parent)
    print(json.dumps(result, indent=2))
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    from stargan.bench.runners import V2_DOMAINS, ShardData
    from stargan.bench.train import bench_train, table
    from stargan.models.ops import use_compile_cache

    variants = args.variants.split(",") if args.variants else (["eager", "fast"] if args.compare_eager else ["fast"])
    out = Path(args.out) if args.out else Path(f"benchmarks/results/train-{args.model}.json")
    use_compile_cache(args.compile_cache)
    data = None
    if args.shards:
        domains = tuple(args.domains.split(",")) if args.domains else tuple(V2_DOMAINS)
        data = ShardData(Path(args.shards), args.loader_workers, domains)
    profile_out = Path(args.profile) if args.profile else None
    result = bench_train(args.model, image_size=args.image_size, batch_size=args.batch_size, iters=args.iters,
                         warmup=args.warmup, variants=variants, device=args.device, out=out, data=data,
                         profile_iters=args.profile_iters if profile_out else 0, profile_out=profile_out,
                         official_src=Path(args.official_src) if args.official_src else None)
    print(table(result))
    print(f"-> {out}" + (f", kernel profile -> {profile_out}" if profile_out else ""))
    return 0


def cmd_bench_parity(args: argparse.Namespace) -> int:
    from stargan.bench.parity import v1_parity
    from stargan.models.ops import use_compile_cache

    use_compile_cache(args.compile_cache)
    summary = v1_parity(Path(args.shards), Path(args.out), iters=args.iters, variants=args.variants.split(","),
                        image_size=args.image_size, batch_size=args.batch_size, loader_workers=args.loader_workers,
                        device=args.device)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_bench_load(args: argparse.Namespace) -> int:
    from stargan.bench.loader_align import bench_load

    cfg = _load(args)
    result = bench_load(cfg, Path(args.out), images=args.images, batches=args.batches)
    print(json.dumps(result["summary"], indent=2))
    print(f"-> {args.out}")
    return 0


def cmd_bench_scaling(args: argparse.Namespace) -> int:
    from stargan.bench.scaling_report import bench_scaling, markdown

    model = bench_scaling(Path(args.out), results=Path(args.results), images=Path(args.images) if args.images else None,
                          n_images=args.decode_images, min_seconds=args.min_seconds, gpus=args.gpus)
    print(markdown(model))
    print(f"-> {args.out}")
    return 0


def _gpu_counts(text: str) -> list[int]:
    try:
        gpus = [int(n) for n in text.split(",")]
    except ValueError:
        gpus = []
    if not gpus or min(gpus) < 1:
        raise argparse.ArgumentTypeError(f"expected a comma list of GPU counts >= 1 (e.g. 8,64,256), got {text!r}")
    return gpus


def cmd_mlflow_upload(args: argparse.Namespace) -> int:
    """Send the history of a run trained while MLflow was unreachable (see stargan.tracking)."""
    from stargan.tracking import Tracker, upload_run

    tracker = Tracker.for_config(_load(args), Path(args.params).resolve().parent)
    run_id = upload_run(tracker, Path(args.run_dir))
    print(json.dumps({"mlflow_run_id": run_id, "tracking_uri": tracker.uri, "run_name": Path(args.run_dir).name},
                     indent=2))
    return 0


def cmd_check_params(args: argparse.Namespace) -> int:
    cfg = _load(args)
    print(f"{args.params}: OK ({cfg.train.model}, datasets: {', '.join(cfg.data.datasets)})")
    return 0


def _registry_uri(args: argparse.Namespace) -> str:
    """Where ``models:/...`` is looked up: $MLFLOW_TRACKING_URI, else the store of the project whose
    params.yaml is --params (default: the first params.yaml in this folder or above it). A SQLite
    store that is not there is an error, not a new empty database."""
    from stargan.tracking import Tracker
    from stargan.translate import TranslateError

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    params = Path(args.params)
    if not params.is_absolute() and not params.exists():
        params = next((d / args.params for d in Path.cwd().parents if (d / args.params).is_file()), params)
    if not params.exists():
        raise TranslateError(f"{args.model}: no project here to find the model registry in (no {args.params} in "
                             f"{Path.cwd()} or above); pass --params <project>/params.yaml or set MLFLOW_TRACKING_URI")
    uri = Tracker.for_config(load_config(params, args.set), params.resolve().parent).uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise TranslateError(f"{args.model}: the project's MLflow store {uri.removeprefix('sqlite:///')} does not "
                             "exist yet (run `dvc repro` or `stargan export` first)")
    return uri


def cmd_translate(args: argparse.Namespace) -> int:
    from stargan.translate import TranslateError, list_inputs, load_any, translate_files

    try:
        tracking_uri = _registry_uri(args) if str(args.model).startswith(("models:/", "runs:/")) else None
        model = load_any(args.model, tracking_uri)
        inputs = list_inputs(args.input)
        done, skipped = translate_files(model, inputs, args.target, args.out, align=not args.no_align,
                                        seed=args.seed, reference=args.reference, paste=not args.no_paste)
        if len(inputs) == 1 and skipped:
            raise TranslateError(skipped[0].reason)
    except TranslateError as e:
        print(f"stargan translate: error: {e}", file=sys.stderr)
        return 2
    for d in done:
        print(f"{d.input} -> {', '.join(str(p) for p in d.outputs)} (grid: {d.grid}; {d.method})")
    for s in skipped:
        print(f"stargan translate: skipped: {s.reason}", file=sys.stderr)
    if skipped:
        print(f"stargan translate: translated {len(done)} of {len(inputs)} photos; {len(skipped)} skipped "
              "(listed above)", file=sys.stderr)
        return 2 if not done else 1
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from stargan.registry import export_and_register

    cfg = _load(args)
    root = Path(args.params).resolve().parent
    ckpt = Path(args.checkpoint) if args.checkpoint else root / cfg.train.output_dir / "checkpoint.pt"
    report, reg = export_and_register(cfg, root, ckpt, register=cfg.export.register and not args.no_register)
    out = {"export_dir": str(root / cfg.export.output_dir), "parity_max": report["parity_max"]}
    if reg is not None:
        out["registry"] = reg.to_dict()
    print(json.dumps(out, indent=2))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from stargan.tuning import run_sweep, write_outputs

    cfg = _load(args)
    root = Path(args.params).resolve().parent
    best = run_sweep(cfg, root)
    write_outputs(best, root)
    print(json.dumps({k: best.get(k) for k in ("name", "searched", "best", "best_value", "objective",
                                               "parent_run_id")}, indent=2))
    return 0


def cmd_import_official(args: argparse.Namespace) -> int:
    """Official checkpoint files -> our checkpoint, export and registered version (stargan.official)."""
    from stargan.config import config_from_dict
    from stargan.official.importer import import_official, summary
    from stargan.official.sources import OfficialSourceError, fetch, get_model_source

    params = Path(args.params)
    base = load_config(params, args.set) if params.exists() else config_from_dict({}, args.set)
    root = params.resolve().parent if params.exists() else Path.cwd()
    files = {role: Path(p) for role, p in (("generator", args.generator), ("discriminator", args.discriminator),
                                           ("nets_ema", args.nets_ema), ("nets", args.nets), ("optims", args.optims),
                                           ("wing", args.wing)) if p}
    name = args.model or "custom"
    if args.download:
        if not args.model:
            raise OfficialSourceError("--download needs --model (one of the official models it fetches)")
        cache = Path(args.cache) if args.cache else root / base.data.root / "downloads" / "official" / name
        fetched = fetch(get_model_source(args.model), cache, url=args.url, sha256=args.sha256,
                        timeout_s=base.download.timeout_s, retries=base.download.retries)
        files = fetched | files
    out = Path(args.out) if args.out else root / "models" / "official" / name
    result = import_official(files, out, base, root, preset=args.model, model=args.kind,
                             labels=[s.strip() for s in args.labels.split(",")] if args.labels else None,
                             dataset=args.dataset, image_size=args.image_size, w_hpf=args.w_hpf, step=args.step,
                             export=not args.checkpoint_only, register=not (args.no_register or args.checkpoint_only),
                             registered_name=args.registered_name)
    print(json.dumps(summary(result), indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """The evaluate stage on any checkpoint, its network sizes taken from the checkpoint itself."""
    from stargan.evaluation.evaluate import evaluate_checkpoint
    from stargan.evaluation.report import headline
    from stargan.training.checkpoint import arch_overrides, load_state

    ckpt = Path(args.checkpoint)
    cfg = load_config(args.params, arch_overrides(load_state(ckpt)) + args.set)
    report = evaluate_checkpoint(cfg, Path(args.params).resolve().parent, checkpoint=ckpt)
    print(json.dumps(headline(report), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stargan", description="StarGAN / StarGAN v2 pipeline commands")
    sub = p.add_subparsers(dest="command", required=True)

    def with_params(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
        sp.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, e.g. -S train.num_iters=1000")
        return sp

    t = with_params(sub.add_parser("train", help="train on Ray Train (or --local: this process, no Ray/MLflow)"))
    t.add_argument("--local", action="store_true", help="run in this process without Ray and MLflow")
    t.add_argument("--device", default=None, help="with --local: cpu, cuda, cuda:1 (default: cuda if available)")
    t.set_defaults(func=cmd_train)

    u = with_params(sub.add_parser("mlflow-upload", help="send a run's history.jsonl (trained while MLflow was "
                                                        "unreachable) to the tracking server"))
    u.add_argument("run_dir", help="the run folder the training warning named (<storage>/<run name>)")
    u.set_defaults(func=cmd_mlflow_upload)

    c = with_params(sub.add_parser("check-params", help="validate a params file"))
    c.set_defaults(func=cmd_check_params)

    tr = with_params(sub.add_parser("translate", help="translate photos with a trained model (aligns faces)"))
    tr.add_argument("--model", required=True,
                    help="models:/stargan@champion, a checkpoint.pt (or its folder), or an exported folder")
    tr.add_argument("--input", required=True, help="an image file or a folder of images")
    tr.add_argument("--target", required=True, action="append",
                    help="v1: label names, comma-combined (Blond_Hair,Male); v2: domain name(s). Repeat for more outputs")
    tr.add_argument("--out", default="translated", help="output folder (default: translated/)")
    tr.add_argument("--no-align", action="store_true", help="inputs are aligned face crops: skip face detection")
    tr.add_argument("--no-paste", action="store_true",
                    help="write the translated face crop only, not the photo with the face pasted back")
    style = tr.add_mutually_exclusive_group()
    style.add_argument("--seed", type=int, default=None, help="v2: latent-guided style from this seed (default 0)")
    style.add_argument("--reference", default=None, help="v2: reference-guided style from this image")
    tr.set_defaults(func=cmd_translate)

    ex = with_params(sub.add_parser("export", help="TorchScript + ONNX export (parity-checked) and MLflow registry"))
    ex.add_argument("--checkpoint", default=None, help="default: <train.output_dir>/checkpoint.pt")
    ex.add_argument("--no-register", action="store_true", help="export files only, no MLflow")
    ex.set_defaults(func=cmd_export)

    tu = with_params(sub.add_parser("tune", help="Ray Tune sweep over the loss weights set to 'tuned' -> tuned.yaml"))
    tu.set_defaults(func=cmd_tune)

    io = with_params(sub.add_parser(
        "import-official", help="import the released StarGAN / StarGAN v2 networks as a model of ours",
        description="Convert official checkpoint files into a stargan checkpoint (<out>/checkpoint.pt), export it "
                    "(TorchScript + ONNX, parity-checked) and register it in the project's MLflow registry with its "
                    "source, licence and sha256. Files are loaded weights-only; a file that does not match the "
                    "architecture is refused with the offending keys named."))
    io.add_argument("--model", default=None, help="the official model: v1-celeba-128, v1-celeba-256, v1-rafd-128, "
                                                   "v2-celeba-hq, v2-afhq (sets the domains, dataset and licence)")
    io.add_argument("--kind", choices=("v1", "v2"), default=None, help="without --model: what the files are")
    io.add_argument("--labels", default=None, help="without --model (or to rename): label/domain names in order, "
                                                   "comma-separated")
    io.add_argument("--generator", default=None, help="v1: 200000-G.ckpt")
    io.add_argument("--discriminator", default=None, help="v1: 200000-D.ckpt (optional; needed to fine-tune D)")
    io.add_argument("--nets-ema", default=None, help="v2: 100000_nets_ema.ckpt")
    io.add_argument("--nets", default=None, help="v2: 100000_nets.ckpt (optional: trained nets and D, to fine-tune)")
    io.add_argument("--optims", default=None, help="v2: 100000_optims.ckpt (optional, with --nets)")
    io.add_argument("--wing", default=None, help="v2 with w_hpf > 0: the FAN weights wing.ckpt (default: the copy "
                                                 "inside the checkpoint, when it has one)")
    io.add_argument("--w-hpf", type=float, default=None, help="v2: w_hpf of a high-pass model (default: the "
                                                              "model's, 1 for CelebA-HQ)")
    io.add_argument("--image-size", type=int, default=None, help="v1 without --discriminator: image size")
    io.add_argument("--dataset", default=None, help="the data.datasets key the model belongs to (default: the "
                                                    "model's dataset, e.g. celeba_hq)")
    io.add_argument("--step", type=int, default=None, help="iteration recorded (default: from the file name)")
    io.add_argument("--out", default=None, help="output folder (default: models/official/<model>)")
    io.add_argument("--download", action="store_true", help="fetch the --model's files from the official URLs first")
    io.add_argument("--cache", default=None, help="with --download: where the files go "
                                                  "(default: <data.root>/downloads/official/<model>)")
    io.add_argument("--url", default=None, help="with --download: a mirror URL instead of the official one")
    io.add_argument("--sha256", default=None, help="with --download: the sha256 the download must have")
    io.add_argument("--registered-name", default=None, help="MLflow registered model name "
                                                            "(default: stargan-<model>)")
    io.add_argument("--no-register", action="store_true", help="checkpoint and export only, no MLflow")
    io.add_argument("--checkpoint-only", action="store_true", help="the checkpoint only: no export, no MLflow")
    io.set_defaults(func=cmd_import_official)

    ev = with_params(sub.add_parser("evaluate", help="evaluate a checkpoint (e.g. an imported official model) with "
                                                     "the project's data and evaluate params"))
    ev.add_argument("--checkpoint", required=True, help="checkpoint.pt; its network sizes override the params'")
    ev.set_defaults(func=cmd_evaluate)

    bench = sub.add_parser("bench", help="benchmarks that write JSON")
    bsub = bench.add_subparsers(dest="bench", required=True)
    bd = with_params(bsub.add_parser("data", help="align, shard and loader throughput (images/s)"))
    bd.add_argument("--out", default="benchmarks/results/data-cpu.json")
    bd.set_defaults(func=cmd_bench_data)
    bl = with_params(bsub.add_parser("load", help="loader (1/2/4 workers) and align (1/2 processes) images/s"))
    bl.add_argument("--out", default="benchmarks/results/load-cpu.json")
    bl.add_argument("--images", type=int, default=512, help="images in the generated aligned/raw sets")
    bl.add_argument("--batches", type=int, default=30, help="timed loader batches per worker count")
    bl.set_defaults(func=cmd_bench_load)
    bs = bsub.add_parser("scaling", help="all-reduce bytes, scaling efficiency and data-path needs (JSON + tables)")
    bs.add_argument("--results", default="benchmarks/results", help="folder of bench train/data JSON to read")
    bs.add_argument("--out", default="benchmarks/results/scaling_model.json")
    bs.add_argument("--images", default=None, help="folder of photos to measure decode on (default: synthetic faces)")
    bs.add_argument("--decode-images", type=int, default=200, help="photos used for the decode measurement")
    bs.add_argument("--min-seconds", type=float, default=1.0,
                    help="CPU seconds per timed repeat (median of 3) per format and size")
    bs.add_argument("--gpus", type=_gpu_counts, default=[8, 64, 256], help="GPU counts to model (comma list)")
    bs.set_defaults(func=cmd_bench_scaling)
    bt = bsub.add_parser("train", help="GPU training-step throughput at the papers' settings (JSON)")
    bt.add_argument("--model", choices=("v1", "v2"), required=True)
    bt.add_argument("--compare-eager", action="store_true", help="also time plain fp32 eager in the same run")
    bt.add_argument("--variants", default=None, help="comma list of stargan.bench.train.VARIANTS and/or 'official' "
                                                     "(the official code, after benchmarks/official/fetch.sh)")
    bt.add_argument("--image-size", type=int, default=None, help="default: 128 (v1), 256 (v2)")
    bt.add_argument("--batch-size", type=int, default=None, help="default: 16 (v1), 8 (v2)")
    bt.add_argument("--iters", type=int, default=None, help="timed iterations (default: 200 v1, 30 v2)")
    bt.add_argument("--warmup", type=int, default=None)
    bt.add_argument("--device", default=None)
    bt.add_argument("--out", default=None, help="default: benchmarks/results/train-<model>.json")
    bt.add_argument("--shards", default=None, help="data included: a shard folder (manifest.json + parquet) read "
                                                   "through the training loader instead of random device tensors")
    bt.add_argument("--loader-workers", type=int, default=4, help="with --shards: DataLoader worker processes")
    bt.add_argument("--domains", default=None, help="with --shards, v2: comma list of domains "
                                                    "(default Black_Hair,Blond_Hair,Brown_Hair)")
    bt.add_argument("--profile", default=None, help="after timing, profile every variant (torch.profiler) and write "
                                                    "the top kernels by self device time to this JSON file")
    bt.add_argument("--profile-iters", type=int, default=3, help="iterations profiled per variant (whole blocks)")
    bt.add_argument("--official-src", default=None, help="folder fetch.sh wrote (default benchmarks/official/src)")
    bt.add_argument("--compile-cache", default=None, help="inductor's on-disk cache folder (TORCHINDUCTOR_CACHE_DIR; "
                                                          "the environment variable wins)")
    bt.set_defaults(func=cmd_bench_train)
    bp = bsub.add_parser("parity", help="v1 eager vs fast-path training on the same shards: per-step losses (CSV)")
    bp.add_argument("--shards", required=True, help="a v1 shard folder (manifest.json + parquet)")
    bp.add_argument("--out", default="benchmarks/results/parity-v1.csv", help="CSV; a .json summary beside it")
    bp.add_argument("--iters", type=int, default=2000)
    bp.add_argument("--variants", default="eager,fast_graphs", help="comma list of stargan.bench.train.VARIANTS")
    bp.add_argument("--image-size", type=int, default=128)
    bp.add_argument("--batch-size", type=int, default=16)
    bp.add_argument("--loader-workers", type=int, default=4)
    bp.add_argument("--device", default=None)
    bp.add_argument("--compile-cache", default=None, help="inductor's on-disk cache folder")
    bp.set_defaults(func=cmd_bench_parity)
    return p


def main(argv: list[str] | None = None) -> int:
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EXPECTED_ERRORS as e:
        print(f"stargan {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
