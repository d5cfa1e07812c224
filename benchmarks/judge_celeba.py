"""How good is the evaluation's judge on real faces? (issue #18)

Trains the attribute classifier the ``classifier`` stage trains (``train_classifier``: same data
stream, loss, optimiser, schedule) on real CelebA images, once per ``arch:width:iters`` run, and
scores it with ``evaluate_real`` on the held-out official ``test`` and ``val`` splits: accuracy and
balanced accuracy per attribute, and which attributes pass ``evaluate.judge_min_accuracy``. The
data goes through the project's own download -> align -> shard stages into ``--project`` (a
temporary project dir, never the repository's data/) unless its shards are already there.

    python benchmarks/judge_celeba.py --celeba ../shared/data/celeba-sample --project /tmp/judge_celeba \\
        --runs small:8:150 small:8:1500 resnet18:64:150 --threads 1 --out benchmarks/results/judge_celeba_sample_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from stargan.evaluation.classifier import evaluate_real, train_classifier
from stargan.evaluation.judge import verdict
from stargan.files import write_json

REPO = Path(__file__).resolve().parents[1]
ATTRIBUTES = ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"]


def prepare(project: Path, celeba: Path, image_size: int) -> Path:
    """``project/data/shards/celeba`` from the CelebA folder, through the pipeline's own stages."""
    shards = project / "data" / "shards" / "celeba"
    if (shards / "manifest.json").exists():
        return shards
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["datasets"] = {"celeba": {"source": "local", "layout": "celeba", "path": str(celeba.resolve()),
                                             "aligned": True, "attributes": ATTRIBUTES}}
    params["align"]["image_size"] = image_size
    params["train"].update(datasets=["celeba"], image_size=image_size)
    project.mkdir(parents=True, exist_ok=True)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("download", "align", "shard"):
        subprocess.run([sys.executable, str(REPO / "pipelines" / f"{stage}.py"), "--params", "params.yaml"],
                       cwd=project, check=True)
    return shards


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.machine())


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(shards: Path, arch: str, width: int, iters: int, args: argparse.Namespace) -> dict:
    load0, wall0, cpu0 = os.getloadavg()[0], time.time(), _cpu_seconds()
    clf = train_classifier(shards, dataset="celeba", image_size=args.image_size, width=width, iters=iters,
                           batch_size=args.batch_size, lr=args.lr, seed=args.seed, arch=arch, augment=args.augment)
    wall, cpu = time.time() - wall0, _cpu_seconds() - cpu0
    out = {"arch": arch, "width": width, "iters": iters, "augment": args.augment,
           "params": sum(p.numel() for p in clf.net.parameters()),
           "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1), "s_per_iter": round(wall / iters, 3),
           "load_avg_1min_before_after": [round(load0, 2), round(os.getloadavg()[0], 2)]}
    for split in ("test", "val"):
        m = evaluate_real(clf, shards, split, batch_size=64)
        labels = {name: {**{k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()},
                         "judge_ok": verdict(s, args.judge_min_accuracy)[2]} for name, s in m["labels"].items()}
        bal = [s["balanced_accuracy"] for s in m["labels"].values() if s["balanced_accuracy"] is not None]
        out[split] = {"images": m["images"], "mean_accuracy": round(m["accuracy"], 4),
                      "mean_balanced_accuracy": round(sum(bal) / len(bal), 4), "labels": labels,
                      "judge_ok": sorted(n for n, s in labels.items() if s["judge_ok"])}
    print(f"[judge] {arch} w{width} {iters} it: {wall:.0f}s; test mean acc {out['test']['mean_accuracy']:.3f}, "
          f"balanced {out['test']['mean_balanced_accuracy']:.3f}, ok {out['test']['judge_ok']}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--celeba", type=Path, required=True, help="a folder in CelebA's layout")
    p.add_argument("--project", type=Path, required=True, help="temporary project dir for the data stages")
    p.add_argument("--runs", nargs="+", default=["small:8:150", "resnet18:64:150"], help="arch:width:iters")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--judge-min-accuracy", type=float, default=0.9)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="evaluate.classifier_augment: the judge_train augmentations (default), or flips only")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--append", action="store_true", help="add the runs to those already in --out")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shards = prepare(args.project, args.celeba, args.image_size)
    manifest = json.loads((shards / "manifest.json").read_text())
    result = {
        "what": "the evaluation's attribute classifier (the judge) trained by the classifier step's own "
                "train_classifier on real CelebA images, scored on the held-out official test and val splits",
        "data": f"{args.celeba} through the project's download/align/shard stages at {args.image_size} px "
                f"(align.image_size; aligned CelebA, centre crop); attributes {ATTRIBUTES}",
        "splits": {s: c["total"] for s, c in manifest["counts"].items()},
        "recipe": {"batch_size": args.batch_size, "lr": args.lr, "optimizer": "Adam, one-cycle LR",
                   "augmentation": "per run: augment true = judge_train (flip, affine, colour, blur; "
                                   "stargan/data/transforms.py), false = horizontal flip only", "seed": args.seed},
        "judge_min_accuracy": args.judge_min_accuracy,
        "scores": "per attribute: accuracy, balanced_accuracy = (TPR + TNR) / 2, images counted (hair colours: "
                  "faces with exactly one of Black/Blond/Brown), positives; judge_ok = balanced >= judge_min_accuracy",
        "machine": {"processor": _cpu_model(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        "command": " ".join(["python", *sys.argv]),
        "runs": [],
    }
    if args.append and args.out.exists():
        result["runs"] = json.loads(args.out.read_text())["runs"]
    for spec in args.runs:
        arch, width, iters = spec.split(":")
        result["runs"].append(run(shards, arch, int(width), int(iters), args))
        write_json(args.out, result)
    print(f"[judge] wrote {args.out}")


if __name__ == "__main__":
    main()
