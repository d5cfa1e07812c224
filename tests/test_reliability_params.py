"""Every wrong key, type or range in params.yaml is one clear error naming the dotted key.

test_config.py has a hand-picked table; this one is generated from the dataclass tree itself, so
a knob added later is covered without touching this file: for every section an unknown key, and
for every knob a value of the wrong type, one below its minimum, one above its maximum and one
outside its choices.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import pytest
import yaml

from stargan.config import Config, ConfigError, DatasetSpec, config_from_dict

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = yaml.safe_load((ROOT / "params.yaml").read_text())


def _sections(cls=Config, prefix: str = ""):
    """(dotted section, dataclass) of every mapping in params.yaml, data.datasets.<name> included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield key, tp
            yield from _sections(tp, key + ".")
        elif typing.get_origin(tp) is dict and typing.get_args(tp)[1] is DatasetSpec:
            yield f"{key}.celeba", DatasetSpec
            yield from _sections(DatasetSpec, f"{key}.celeba.")


def _leaves():
    for section, cls in [("", Config), *_sections()]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp) or typing.get_origin(tp) is dict:
                continue
            yield (f"{section}.{f.name}" if section else f.name), tp, f.metadata


def _wrong_type(tp) -> tuple[str, str]:
    """A YAML value of the wrong type for ``tp`` and the fragment its error must contain."""
    args = set(typing.get_args(tp)) if typing.get_origin(tp) in (typing.Union, types.UnionType) else {tp}
    args.discard(type(None))
    (base,) = args
    if base is bool:
        return "maybe", "expected true/false"
    if base in (int, float):
        return "lots", "expected a" + ("n integer" if base is int else " number")
    if base is str:
        return "[1, 2]", "expected "
    if typing.get_origin(base) is list:
        return "{a: 1}", "expected list of"
    raise AssertionError(f"no wrong value for {tp}")


def cases():
    for section, _ in _sections():
        yield pytest.param(f"{section}.no_such_knob=1", f"{section}.no_such_knob: unknown key", id=f"unknown-{section}")
    for key, tp, meta in _leaves():
        # a loss weight the sweep may set takes a number or the word 'tuned'
        value, fragment = ("lots", "expected a number or 'tuned'") if meta.get("tunable") else _wrong_type(tp)
        yield pytest.param(f"{key}={value}", f"{key}: {fragment}", id=f"type-{key}")
        base = int if "int" in str(tp) and "float" not in str(tp) else float
        if meta.get("lo") is not None:
            low = meta["lo"] - 1 if base is int else meta["lo"] - 0.5
            yield pytest.param(f"{key}={low}", f"{key}: {low!r} is below the minimum", id=f"lo-{key}")
        if meta.get("hi") is not None:
            high = meta["hi"] + 1 if base is int else meta["hi"] + 0.5
            yield pytest.param(f"{key}={high}", f"{key}: {high!r} is above the maximum", id=f"hi-{key}")
        if meta.get("choices"):      # a value of the right type that is not one of them
            choices = meta["choices"]
            bad = max(choices) + 1 if all(type(c) is int for c in choices) else "not_a_choice"
            yield pytest.param(f"{key}={bad}", f"{key}: {bad!r} is not allowed; choose one of", id=f"choice-{key}")


@pytest.mark.parametrize("override, fragment", list(cases()))
def test_each_wrong_key_type_or_range_is_one_error_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as e:
        config_from_dict(SHIPPED, [override])
    msg = str(e.value)
    assert msg.startswith(fragment.split(":")[0] + ":"), f"the error starts with the dotted key: {msg}"
    assert fragment in msg
    assert "\n" not in msg, "one error, one line"


def test_the_generated_table_covers_every_section_and_knob():
    names = {p.id for p in cases()}
    for section in ("data.datasets.celeba", "synthetic", "download", "align", "shard", "train", "train.v1",
                    "train.v2", "train.ray", "train.mlflow", "evaluate", "tune", "export"):
        assert f"unknown-{section}" in names
    assert len([n for n in names if n.startswith("type-")]) == len(list(_leaves()))
    assert len(names) > 150


@pytest.mark.parametrize("text, fragment", [
    ("- just\n- a list\n", "expected a mapping of sections at the top level"),
    ("train: 3\n", "train: expected a mapping of the keys"),
    ("data:\n  datasets: [celeba]\n", "data.datasets: expected mapping of name -> mapping"),
    ("data:\n  datasets:\n    celeba: local\n", "data.datasets.celeba: expected a mapping"),
    ("train:\n  batch_size: 1e400\n", "train.batch_size: expected an integer"),
    ("train:\n  v1:\n    g_lr: .inf\n", "train.v1.g_lr: expected a finite number"),
    ("train:\n  seed: true\n", "train.seed: expected an integer, got True"),
    ("tune:\n  lambda_rec: [1.0]\n", "tune.lambda_rec: expected [low, high]"),
])
def test_malformed_files_are_one_error(tmp_path, text, fragment):
    from stargan.config import load_config

    p = tmp_path / "params.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert fragment in str(e.value) and str(p) in str(e.value)
