"""What every DVC stage script shares: argument parsing, config loading, and turning the
project's expected errors into one clear line on stderr with exit status 2 (no stack trace),
while unexpected errors still show their traceback."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

from stargan.config import Config, load_config
from stargan.errors import StarganError, one_line

#: Set (unless the user set them) by every stage and the ``stargan`` command: no usage reports, no
#: update checks, and no MLflow artifact progress bar (a tqdm bar redrawn with carriage returns,
#: which a CI log or ``dvc repro``'s console keeps as one garbled line per download).
QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
             "DVC_NO_ANALYTICS": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
             "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


#: Errors that mean "bad input or environment", reported as one line (stargan/errors.py).
EXPECTED_ERRORS = (StarganError, FileNotFoundError)


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
    except EXPECTED_ERRORS as e:
        print(f"[{name}] error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0
