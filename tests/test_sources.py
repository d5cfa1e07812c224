"""The dataset registry: one place naming every source, resolved against params entries."""
import pytest

from stargan.config import SOURCES, DatasetSpec
from stargan.data import sources
from stargan.data.sources import REGISTRY, SourceError, direct_url, get_source, resolve


def test_registry_matches_config_choices():
    assert set(REGISTRY) == set(SOURCES)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(SourceError) as e:
        get_source("imagenet")
    for name in SOURCES:
        assert name in str(e.value)


def test_official_entries():
    for name in ("celeba", "celeba_hq", "afhq", "afhq_v2"):
        s = get_source(name)
        assert s.kind == "http" and s.archive == "zip"
        assert s.url.startswith("https://www.dropbox.com/") and s.url.endswith("?dl=1")
        assert s.sha256 is None          # no published checksum: never invented
        assert s.aligned
    assert get_source("celeba").crop == 178 and get_source("celeba").layout == "celeba"
    assert get_source("celeba").inner == "celeba"
    for name in ("celeba_hq", "afhq", "afhq_v2"):
        assert get_source(name).crop == 0 and get_source(name).layout == "folders"
    assert get_source("rafd").needs_path and get_source("rafd").layout == "rafd"


def test_direct_url():
    assert direct_url("https://www.dropbox.com/s/abc/x.zip?dl=0") == "https://www.dropbox.com/s/abc/x.zip?dl=1"
    assert direct_url("https://www.dropbox.com/s/abc/x.zip") == "https://www.dropbox.com/s/abc/x.zip?dl=1"
    assert direct_url("http://127.0.0.1:8000/x.zip?dl=0") == "http://127.0.0.1:8000/x.zip?dl=0"


def test_resolve_modes(tmp_path):
    rs = resolve("faces", DatasetSpec(source="synthetic", layout="rafd"))
    assert rs.mode == "generate" and rs.url is None
    rs = resolve("celeba", DatasetSpec(source="celeba", layout="celeba"))
    assert rs.mode == "download" and rs.url == get_source("celeba").url and rs.crop == 178 and rs.aligned
    rs = resolve("celeba", DatasetSpec(source="celeba", layout="celeba", url="http://h/x.zip", crop=160))
    assert rs.url == "http://h/x.zip" and rs.crop == 160
    rs = resolve("celeba", DatasetSpec(source="celeba", layout="celeba", path=str(tmp_path)))
    assert rs.mode == "local" and rs.path == tmp_path and rs.inner == "celeba"
    rs = resolve("mine", DatasetSpec(source="local", layout="folders", path=str(tmp_path), sha256="AB" * 32))
    assert rs.mode == "local" and rs.sha256 == "ab" * 32 and rs.crop == 0


def test_resolve_errors_name_the_key(tmp_path):
    with pytest.raises(SourceError, match=r"data\.datasets\.rafd\.path.*Radboud|data\.datasets\.rafd\.path"):
        resolve("rafd", DatasetSpec(source="rafd", layout="rafd"))
    with pytest.raises(SourceError, match=r"data\.datasets\.cats\.layout.*folders"):
        resolve("cats", DatasetSpec(source="afhq", layout="celeba"))
    with pytest.raises(SourceError, match=r"data\.datasets\.x\.sha256"):
        resolve("x", DatasetSpec(source="celeba", layout="celeba", sha256="not-a-hash"))
    with pytest.raises(SourceError, match=r"data\.datasets\.x\.path.*does not exist"):
        resolve("x", DatasetSpec(source="local", layout="folders", path=str(tmp_path / "nope")))
    with pytest.raises(SourceError, match=r"synthetic"):
        resolve("x", DatasetSpec(source="synthetic", layout="folders"))


def test_crop_and_aligned_helpers():
    assert sources.official_crop(DatasetSpec(source="celeba")) == 178
    assert sources.official_crop(DatasetSpec(source="celeba", crop=150)) == 150
    assert sources.official_crop(DatasetSpec(source="afhq", layout="folders")) == 0
    assert sources.is_aligned(DatasetSpec(source="afhq", layout="folders"))
    assert not sources.is_aligned(DatasetSpec(source="local", layout="folders", path="x"))


def test_resolve_carries_what_the_reader_and_walker_need(tmp_path):
    rs = resolve("c", DatasetSpec(source="local", layout="celeba", path=str(tmp_path), attributes=["Male"],
                                  missing="skip", follow_links=True))
    assert (rs.attributes, rs.missing, rs.follow_links) == (("Male",), "skip", True)
    rs = resolve("c", DatasetSpec(source="synthetic"))
    assert (rs.missing, rs.follow_links) == ("error", False)     # the safe defaults
