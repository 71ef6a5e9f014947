"""The captions path on the real 52,001 upstream captions, when ../shared/seed is beside the checkout."""

import pytest

import synmirror
from conftest import SEED

REAL = SEED / "captioin.json"
pytestmark = pytest.mark.skipif(not REAL.is_file(), reason="needs ../shared/seed/captioin.json (a maintainer's checkout)")


def test_real_captions_match_the_pinned_file():
    assert REAL.stat().st_size == synmirror.CAPTIONS.size
    synmirror.check_sha256(str(REAL), synmirror.CAPTIONS.sha256, "the seed captions")  # raises on mismatch
    captions = synmirror.read_captions(str(REAL))
    assert len(captions) == 52_001
    assert list(captions) == [synmirror.format_id(i) for i in range(52_001)]
    assert captions["00000"].startswith("a baby")


def test_captions_config_downloads_and_checks_the_real_file(build, serve):
    base = serve(SEED)  # stands in for the pinned upstream URL: same bytes, same checksum
    ds = build("captions", urls={"captions": f"{base}/captioin.json"}, captions_sha256=synmirror.CAPTIONS.sha256)
    assert ds.num_rows == 52_001
    assert ds[0]["id"] == "00000" and ds[-1]["id"] == "52000"
    assert ds["id"] == sorted(ds["id"])
