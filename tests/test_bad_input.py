"""Bad input: each gets a clear error naming the file (and the ID) and what to do; nothing lands outside."""

import io
import json
import os
import shutil
import tarfile
import zipfile

import pytest
from PIL import Image

import synmirror
from factory import DRIVE_QUOTA_PAGE, add_tar_member, make_image, png_header_only, truncate, write_members

Error = synmirror.SynMirrorError


@pytest.mark.parametrize("layout", ["zip", "tar.gz", "tar"])
def test_truncated_archive(release, build, layout):
    made = release(ids=40, size=64, layouts={"sdxl": layout})
    truncate(made.paths["sdxl"], 0.5)
    with pytest.raises(Error, match=rf"{made.paths['sdxl'].name}.*(damaged|truncated).*download it again"):
        build("sdxl", data_dir=str(made.root))


def test_zip_member_damaged_inside_names_the_entry_and_id(release, build):
    made = release(ids=3, layouts={"nat": "zip"}, junk=False)
    data = bytearray(made.paths["nat"].read_bytes())
    start = data.index(made.images["nat"]["00001"])
    data[start + 40] ^= 0xFF  # flip a byte of 00001.png: its CRC no longer matches
    made.paths["nat"].write_bytes(bytes(data))
    with pytest.raises(Error, match=r"nat.zip: '00001.png' \(ID 00001\) cannot be read .*Download the archive again"):
        build("nat", data_dir=str(made.root))


def test_not_an_archive(release, build):
    made = release(ids=2, layouts={"sd": "zip"})
    made.paths["sd"].write_bytes(b"just some text, not an archive at all" * 20)
    with pytest.raises(Error, match=r"sd.zip is not a zip or tar archive.*download it again"):
        build("sd", data_dir=str(made.root))


def test_drive_web_page_instead_of_archive(release, build):
    made = release(ids=2, layouts={"sd": "zip"})
    made.paths["sd"].write_bytes(DRIVE_QUOTA_PAGE)
    with pytest.raises(Error, match=r"sd.zip is a web page.*Google Drive.*quota"):
        build("sd", data_dir=str(made.root))


ESCAPES = {
    "dot-dot": ("../../escaped.png", None, "climbs out of the archive"),
    "absolute": ("/tmp/synmirror-escaped.png", None, "has an absolute path"),
    "symlink": ("00001.png", "/etc/passwd", "is a link to '/etc/passwd'"),
}


@pytest.mark.parametrize("kind", ESCAPES)
@pytest.mark.parametrize("layout", ["tar", "tar.gz"])
def test_tar_entry_escaping_the_folder_is_refused_and_never_written(tmp_path, build, kind, layout):
    name, link, message = ESCAPES[kind]
    data_dir = tmp_path / "data" / "deep"
    data_dir.mkdir(parents=True)
    (data_dir / "caption.json").write_text(json.dumps({"00000": "a", "00001": "b"}))
    with tarfile.open(data_dir / f"nat.{layout}", "w:gz" if layout == "tar.gz" else "w") as archive:
        add_tar_member(archive, "00000.png", make_image("00000", "nat"))
        add_tar_member(archive, name, make_image("00001", "nat"), link=link)
    before = set(tmp_path.rglob("*"))
    with pytest.raises(Error, match=rf"nat.{layout}: entry {name!r} {message}.*not unpacked"):
        build("nat", data_dir=str(data_dir))
    assert not os.path.exists("/tmp/synmirror-escaped.png")
    written = {p for p in set(tmp_path.rglob("*")) - before if p.suffix == ".png"}
    assert written == set()  # not even the good entry's partial extraction is left


@pytest.mark.parametrize("kind", ["dot-dot", "absolute", "symlink"])
def test_zip_entry_escaping_is_refused(tmp_path, build, kind):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "caption.json").write_text(json.dumps({"00000": "a"}))
    with zipfile.ZipFile(data_dir / "sdxl.zip", "w") as archive:
        archive.writestr("00000.png", make_image("00000", "sdxl"))
        if kind == "symlink":
            info = zipfile.ZipInfo("00001.png")
            info.external_attr = (0o120777 << 16)
            archive.writestr(info, "/etc/passwd")
        else:
            archive.writestr(ESCAPES[kind][0], make_image("00001", "sdxl"))
    with pytest.raises(Error, match=r"sdxl.zip: entry .* (climbs out|absolute path|symbolic link)"):
        build("sdxl", data_dir=str(data_dir))


@pytest.mark.parametrize("layout", ["zip", "folder", "tar"])
def test_file_that_is_not_an_image(release, build, layout):
    made = release(ids=3, layouts={"infinity": layout})
    members = {f"{i}.webp": made.images["infinity"][i] for i in ("00000", "00002")}
    members["00001.webp"] = b"this is not a webp"
    for path in made.root.glob("infinity*"):
        path.unlink() if path.is_file() else shutil.rmtree(path)
    write_members(made.root, "infinity", layout, members)
    with pytest.raises(Error, match=r"'00001.webp' \(ID 00001\) is not a usable image.*Replace or remove"):
        build("infinity", data_dir=str(made.root))


def test_image_declaring_too_many_pixels(tmp_path, build):
    data_dir = tmp_path / "data"
    write_members(data_dir, "nat", "zip", {"00000.png": make_image("00000", "nat"),
                                           "00001.png": png_header_only(40_000, 40_000)})
    (data_dir / "caption.json").write_text(json.dumps({"00000": "a", "00001": "b"}))
    with pytest.raises(Error, match=r"'00001.png' \(ID 00001\) is not a usable image.*(limit|exceeds)"):
        build("nat", data_dir=str(data_dir))


def test_image_in_another_format(tmp_path, build):
    data_dir = tmp_path / "data"
    gif = io.BytesIO()
    Image.new("RGB", (4, 4)).save(gif, format="GIF")
    write_members(data_dir, "nat", "folder", {"00000.png": gif.getvalue()})
    (data_dir / "caption.json").write_text(json.dumps({"00000": "a"}))
    with pytest.raises(Error, match=r"\(ID 00000\) is not a usable image: it is GIF"):
        build("nat", data_dir=str(data_dir))


@pytest.mark.parametrize("names", [("00001.png", "00001.jpg"), ("a/00001.png", "b/1.png")])
def test_two_files_with_the_same_id(tmp_path, build, names):
    data_dir = tmp_path / "data"
    write_members(data_dir, "sd", "zip", {names[0]: make_image("1", "sd"), names[1]: make_image("1", "sd"),
                                          "00002.png": make_image("2", "sd")})
    (data_dir / "caption.json").write_text(json.dumps({"00001": "a", "00002": "b"}))
    with pytest.raises(Error, match=rf"sd.zip: two images for ID 00001: {names[0]!r} and {names[1]!r}"):
        build("sd", data_dir=str(data_dir))


def test_archive_with_no_images(tmp_path, build):
    data_dir = tmp_path / "data"
    write_members(data_dir, "sd", "zip", {"readme.txt": b"nothing here"})
    (data_dir / "caption.json").write_text(json.dumps({"00001": "a"}))
    with pytest.raises(Error, match=r"sd.zip holds no images named by ID"):
        build("sd", data_dir=str(data_dir))


def test_orphans_are_reported_and_kept_as_documented(release, build, caplog):
    made = release(ids=8, missing={"sdxl": ["00001", "00004"]}, uncaptioned=["00006"])
    ds = build("sdxl", data_dir=str(made.root))
    assert ds["id"] == ["00000", "00002", "00003", "00005", "00006", "00007"]
    assert ds["caption"][ds["id"].index("00006")] is None  # kept, caption null
    assert "sdxl: 2 captions have no image, e.g. IDs ['00001', '00004']" in caplog.text
    assert "sdxl: 1 images have no caption (their caption is null), e.g. IDs ['00006']" in caplog.text
    paired = build("paired", data_dir=str(made.root))
    assert paired["id"] == [synmirror.format_id(i) for i in range(8)]  # every ID seen anywhere


@pytest.mark.parametrize(
    "content, message",
    [
        (b"{not json", "is not JSON"),
        (b"\xff\xfe\x00", "is not JSON"),
        (b'["a baby"]', "holds a JSON list"),
        (b'{"baby": "a baby"}', "key 'baby' is not an ID"),
        (b'{"00001": 3}', "the caption of ID 00001 is a int"),
        (b'{"1": "a", "00001": "b"}', "ID 00001 appears twice"),
    ],
)
def test_bad_captions_file(release, build, content, message):
    made = release(ids=2)
    made.paths["captions"].write_bytes(content)
    with pytest.raises(Error, match=rf"captioin.json.*{message}"):
        build("captions", data_dir=str(made.root))


def test_captions_failing_checksum_are_deleted_and_reported(release, build, serve):
    made = release(ids=2)
    base = serve(made.root)
    with pytest.raises(Error, match=r"captions from .* fails its checksum.*was deleted"):
        build("captions", urls={"captions": f"{base}/captioin.json"}, captions_sha256="0" * 64)


def test_download_that_fails_says_how_to_download_by_hand(build, serve, tmp_path):
    base = serve(tmp_path)  # serves nothing: 404
    with pytest.raises(Error, match=r"(?s)could not download sdxl from .*sdxl.zip.*drive.google.com/file/d/.*--data-dir"):
        build("sdxl", urls={"captions": f"{base}/../x", "sdxl": f"{base}/sdxl.zip"}, data_dir=str(_captions_only(tmp_path)))


def _captions_only(tmp_path):
    folder = tmp_path / "captions-only"
    folder.mkdir()
    (folder / "caption.json").write_text(json.dumps({"00000": "a"}))
    return folder


def test_two_copies_of_a_source_in_data_dir(release, build):
    made = release(ids=2, layouts={"nat": "zip"})
    write_members(made.root, "nat", "folder", {"00000.png": made.images["nat"]["00000"]})
    with pytest.raises(Error, match=r"holds several copies of nat: .*nat, .*nat.zip. Keep one"):
        build("nat", data_dir=str(made.root))


def test_unknown_url_key(build):
    with pytest.raises(Error, match=r"urls has unknown keys \['nats'\]"):
        build("nat", urls={"nats": "http://127.0.0.1:9/x"})
