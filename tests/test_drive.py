"""The upstream Google Drive path, through gdown's real code, against a stand-in of Drive on loopback."""

import shutil

import pytest

import synmirror
from drive_standin import DriveStandIn

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command for test certificates")


@pytest.fixture
def drive(tmp_path, monkeypatch):
    stand_ins = []

    def start(files, over_quota=()):
        stand_in = DriveStandIn(tmp_path / "tls", files, over_quota)
        for name, value in stand_in.environment().items():
            monkeypatch.setenv(name, value)
        stand_ins.append(stand_in)
        return stand_in

    yield start
    for stand_in in stand_ins:
        stand_in.close()


def test_sources_download_from_drive_through_its_confirmation_page(release, build, serve, drive):
    made = release(ids=5, layouts={"nat": "zip", "sdxl": "tar.gz"})
    drive_ids = {synmirror.SOURCES[s].drive_id: (made.paths[s].name, made.paths[s].read_bytes()) for s in ("nat", "sdxl")}
    stand_in = drive(drive_ids)
    captions = f"{serve(made.root)}/captioin.json"
    for source in ("nat", "sdxl"):
        ds = build(source, urls={"captions": captions})  # no data_dir, no image URL: upstream Drive
        assert ds["id"] == ["00000", "00001", "00002", "00003", "00004"]
    hosts = [host for host, _, _ in stand_in.requests]
    assert hosts.count("drive.google.com") == 2 and hosts.count("drive.usercontent.google.com") == 2


def test_drive_quota_page_points_to_the_manual_download(build, serve, release, drive, tmp_path):
    made = release(ids=2)
    drive({}, over_quota=[synmirror.SOURCES["sd"].drive_id])
    with pytest.raises(synmirror.SynMirrorError) as raised:
        build("sd", urls={"captions": f"{serve(made.root)}/captioin.json"})
    message = str(raised.value)
    assert "Google Drive refused to serve sd" in message and "Too many users" in message
    assert synmirror.SOURCES["sd"].drive_url in message and "--data-dir" in message
    assert not list((tmp_path / "cache").rglob(f"sd-{synmirror.SOURCES['sd'].drive_id}*"))  # nothing kept
