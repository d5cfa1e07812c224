"""What every DVC stage script shares: argument parsing, config loading, and turning the
project's expected errors into one clear line on stderr with exit status 2 (no stack trace),
while unexpected errors still show their traceback."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from stargan.config import Config, ConfigError, load_config

QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
             "DVC_NO_ANALYTICS": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}


def expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "bad input or environment", reported as one line."""
    from stargan.data.formats import DataFormatError
    from stargan.training.checkpoint import CheckpointError
    from stargan.training.errors import TrainingError

    errs: list[type[BaseException]] = [ConfigError, DataFormatError, CheckpointError, TrainingError, FileNotFoundError]
    for mod, name in (("stargan.data.download", "DownloadError"), ("stargan.data.archive", "ArchiveError"),
                      ("stargan.data.shards", "ShardError"), ("stargan.data.align", "AlignError")):
        try:
            errs.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errs)


def run_stage(name: str, body: Callable[[Config, Path], Any], argv: list[str] | None = None) -> int:
    """Parse ``--params`` and ``-S key=value`` overrides, load the config and run ``body``."""
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    p = argparse.ArgumentParser(prog=f"pipelines/{name}.py", description=f"DVC stage '{name}'")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="override a param")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.params, args.set)
        body(cfg, Path(args.params).resolve().parent)
    except expected_errors() as e:
        print(f"[{name}] error: {e}", file=sys.stderr)
        return 2
    return 0


def write_json(path: str | Path, data: Any) -> Path:
    """Atomic JSON write (temp file + rename), sorted keys for stable diffs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return path
