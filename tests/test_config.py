"""The params loader: the shipped file loads, and every kind of mistake is one clear error."""
from pathlib import Path

import pytest
import yaml

from stargan.config import Config, ConfigError, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]


def shipped() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_shipped_params_load_and_match_dataclass_defaults_shape():
    cfg = load_config(ROOT / "params.yaml")
    assert isinstance(cfg, Config)
    assert cfg.train.datasets == ["celeba", "rafd"]
    assert cfg.data.datasets["rafd"].aligned is True
    # every section of the dataclass tree is spelled out in params.yaml (one place for every knob)
    assert set(shipped()) == set(Config().to_dict())


@pytest.mark.parametrize("override, fragment", [
    ("train.v1.lamda_rec=3", "train.v1.lamda_rec: unknown key. Did you mean 'lambda_rec'?"),
    ("trian.batch_size=3", "trian: unknown key. Did you mean 'train'?"),
    ("train.batch_size=-1", "train.batch_size: -1 is below the minimum 1"),
    ("train.batch_size=2.5", "train.batch_size: expected an integer, got 2.5"),
    ("train.batch_size=eight", "train.batch_size: expected an integer, got 'eight'"),
    ("train.model=v3", "train.model: 'v3' is not allowed; choose one of v1, v2"),
    ("train.amp_bf16=maybe", "train.amp_bf16: expected true/false"),
    ("train.v1.beta1=1.5", "train.v1.beta1: 1.5 is above the maximum 1"),
    ("train.v1.g_lr=.nan", "train.v1.g_lr: expected a finite number"),
    ("train.datasets=[celeba, nope]", "train.datasets: 'nope' is not a dataset"),
    ("data.datasets.celeba.source=dropbox", "data.datasets.celeba.source: 'dropbox' is not allowed"),
    ("data.datasets.celeba.source=local", "data.datasets.celeba.path: required when source is 'local'"),
    ("data.datasets.celeba.attributes=Male", "data.datasets.celeba.attributes: expected list of string"),
    ("train.v1=3", "train.v1: expected a mapping"),
    ("tune.lambda_cls=[2.0, 1.0]", "tune.lambda_cls: expected [low, high]"),
    ("train.model=v2", "StarGAN v2 trains on one dataset"),
    ("align.image_size=8", "align.image_size: 8 is below the minimum 16 (allowed: 16..1024)"),
])
def test_each_mistake_is_one_error_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as e:
        config_from_dict(shipped(), [override])
    assert fragment in str(e.value)


def test_error_names_the_file(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  batch_size: zero\n")
    with pytest.raises(ConfigError, match=r"params.yaml: train.batch_size: expected an integer"):
        load_config(p)
    p.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="no such params file"):
        load_config(tmp_path / "absent.yaml")


def test_overrides_parse_yaml_values_and_ints_widen_to_floats():
    cfg = config_from_dict(shipped(), ["train.v1.g_lr=1", "train.batch_size=8", "train.amp_bf16=true"])
    assert cfg.train.v1.g_lr == 1.0 and isinstance(cfg.train.v1.g_lr, float)
    assert cfg.train.batch_size == 8 and cfg.train.amp_bf16 is True


def test_fingerprint_tracks_the_named_sections_only():
    a = config_from_dict(shipped())
    b = config_from_dict(shipped(), ["evaluate.batch_size=7"])
    c = config_from_dict(shipped(), ["train.batch_size=7"])
    assert a.fingerprint("train") == b.fingerprint("train") != c.fingerprint("train")
