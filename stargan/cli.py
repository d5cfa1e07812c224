"""`stargan` command: the user-facing entry points. Parsing only; the work is in the library."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stargan.stage import QUIET_ENV, expected_errors


def _load(args: argparse.Namespace):
    from stargan.config import load_config

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
    print(json.dumps({"checkpoint": str(out.checkpoint), "mlflow_run_id": out.mlflow_run_id,
                      "tracking_uri": out.tracking_uri, "run_name": out.run_name,
                      "metrics": {k: v for k, v in out.metrics.items() if isinstance(v, (int, float))}}, indent=2))
    return 0


def cmd_bench_data(args: argparse.Namespace) -> int:
    from stargan.bench.data import bench_data

    cfg = _load(args)
    result = bench_data(cfg, Path(args.out), repo_root=Path(args.params).resolve().parent)
    print(json.dumps(result, indent=2))
    return 0


def cmd_check_params(args: argparse.Namespace) -> int:
    cfg = _load(args)
    print(f"{args.params}: OK ({cfg.train.model}, datasets: {', '.join(cfg.data.datasets)})")
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

    c = with_params(sub.add_parser("check-params", help="validate a params file"))
    c.set_defaults(func=cmd_check_params)

    bench = sub.add_parser("bench", help="benchmarks that write JSON")
    bsub = bench.add_subparsers(dest="bench", required=True)
    bd = with_params(bsub.add_parser("data", help="align, shard and loader throughput (images/s)"))
    bd.add_argument("--out", default="benchmarks/results/data-cpu.json")
    bd.set_defaults(func=cmd_bench_data)
    return p


def main(argv: list[str] | None = None) -> int:
    import os

    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except expected_errors() as e:
        print(f"stargan {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
