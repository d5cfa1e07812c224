"""The metric registry: ``name -> function(ctx) -> MetricResult`` filled by ``@register_metric``.

Each metric lives in its own module (``metric_*.py``) and returns numbers under flat keys
(``"celeba/Black_Hair/l1"``), optional tables (rows for the DVC plots), metadata, and sections of
``reports/eval.json`` that are not numbers per key (e.g. ``judge``: which target accuracies to trust).
:func:`calc_metric` times it and turns :class:`MetricUnavailable` (missing weights, real data
for a synthetic-only metric, no classifier) into an ``available: False`` result that carries the
reason and the setting that fixes it, so a report never shows a made-up number. The metric
modules import this one (to register), never the other way round; ``evaluate.py`` imports them
all, so the registry is full wherever the evaluation package is used.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

from stargan.evaluation.errors import MetricUnavailable
from stargan.evaluation.tasks import EvalContext


@dataclass
class MetricResult:
    name: str
    results: dict[str, float] = field(default_factory=dict)
    tables: dict[str, list[dict]] = field(default_factory=dict)     # plot name -> rows
    meta: dict = field(default_factory=dict)
    sections: dict[str, dict] = field(default_factory=dict)         # extra top-level parts of reports/eval.json
    available: bool = True
    reason: str = ""
    fix: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        out = {"name": self.name, "available": self.available, "results": self.results, "meta": self.meta,
               "seconds": round(self.seconds, 3)}
        if not self.available:
            out.update(reason=self.reason, fix=self.fix)
        return out


@dataclass(frozen=True)
class MetricSpec:
    name: str
    fn: Callable[[EvalContext], MetricResult]
    models: tuple[str, ...]         # "v1", "v2"
    quick: bool                     # part of quick_objective
    doc: str


_REGISTRY: dict[str, MetricSpec] = {}


def register_metric(name: str, *, models: tuple[str, ...] = ("v1", "v2"), quick: bool = False):
    def deco(fn: Callable[[EvalContext], MetricResult]):
        if name in _REGISTRY:
            raise ValueError(f"metric {name!r} registered twice")
        _REGISTRY[name] = MetricSpec(name, fn, models, quick, (fn.__doc__ or "").strip().split("\n")[0])
        return fn
    return deco


def list_metrics(kind: str | None = None) -> list[str]:
    return [n for n, s in _REGISTRY.items() if kind is None or kind in s.models]


def get_metric(name: str) -> MetricSpec:
    if name not in _REGISTRY:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def calc_metric(name: str, ctx: EvalContext) -> MetricResult:
    """Run one metric; unavailability becomes a result with ``available=False``."""
    spec = get_metric(name)
    t0 = time.time()
    if ctx.kind not in spec.models:
        res = MetricResult(name, available=False, reason=f"not defined for StarGAN {ctx.kind} "
                           f"(only {', '.join(spec.models)})", fix="")
    else:
        try:
            res = spec.fn(ctx)
        except MetricUnavailable as e:
            res = MetricResult(name, available=False, reason=e.reason, fix=e.fix)
        except Exception as e:  # noqa: BLE001 - one broken metric must not sink the report
            traceback.print_exc()
            res = MetricResult(name, available=False, reason=f"failed: {type(e).__name__}: {str(e)[:300]}",
                               fix="see the traceback in the stage log")
    res.name = name
    res.seconds = time.time() - t0
    return res
