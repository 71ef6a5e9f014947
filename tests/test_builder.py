"""The builder on well-formed releases: every config, every layout, every place data can come from."""

import hashlib
import json

import datasets
import pytest

import synmirror
from factory import LAYOUTS, caption_for

SOURCES = list(synmirror.SOURCES)


def raw_images(dataset, column="image"):
    """{id: stored bytes} of an image column, without decoding."""
    undecoded = dataset.cast_column(column, datasets.Image(decode=False))
    return {row["id"]: row[column]["bytes"] for row in undecoded if row[column] is not None}


@pytest.mark.parametrize("source", SOURCES)
def test_source_config_holds_each_image_with_its_caption(release, build, source):
    made = release(ids=["00000", "00003", "00010", "00123", "52000"])
    ds = build(source, data_dir=str(made.root))
    assert ds["id"] == sorted(made.images[source])
    assert ds["caption"] == [made.captions[i] for i in ds["id"]]
    assert raw_images(ds) == made.images[source]  # byte for byte as stored in the archive
    assert set(ds["source"]) == {source}
    assert set(ds["model"]) == {synmirror.SOURCES[source].model}
    assert set(ds["width"]) == set(ds["height"]) == {32}
    assert ds["seed"] == [None] * len(ds)
    assert ds[0]["image"].size == (32, 32)  # and it decodes


def test_captions_config(release, build):
    made = release(ids=12)
    ds = build("captions", data_dir=str(made.root))
    assert ds.column_names == ["id", "caption"]
    assert dict(zip(ds["id"], ds["caption"])) == made.captions
    assert ds["id"] == sorted(ds["id"])


def test_paired_config_joins_all_sources_with_nulls_where_missing(release, build):
    made = release(ids=10, missing={"sd": ["00002", "00007"], "infinity": ["00000"]})
    ds = build("paired", data_dir=str(made.root))
    assert ds["id"] == [synmirror.format_id(i) for i in range(10)]
    assert ds["caption"] == [caption_for(i) for i in ds["id"]]
    for source in SOURCES:
        assert raw_images(ds, source) == made.images[source]
    rows = {row["id"]: row for row in ds.cast_column("sd", datasets.Image(decode=False))}
    assert rows["00002"]["sd"] is None and rows["00007"]["sd"] is None and rows["00003"]["sd"] is not None


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_reads_the_same_rows(release, build, layout):
    made = release(ids=["00001", "00002", "01500", "02999"], layouts={"sdxl": layout})
    ds = build("sdxl", data_dir=str(made.root))
    assert ds["id"] == ["00001", "00002", "01500", "02999"]  # junk (__MACOSX, dot-files, .txt) skipped
    assert raw_images(ds) == made.images["sdxl"]


def test_id_rule():
    assert synmirror.id_from_name("00123.png") == "00123"
    assert synmirror.id_from_name("nat/00000/00123.png") == "00123"
    assert synmirror.id_from_name("123.JPG") == "00123"
    assert synmirror.id_from_name("00123_sdxl.webp") == "00123"
    assert synmirror.id_from_name("00123-1.jpeg") == "00123"
    assert synmirror.id_from_name("00123.seed7.png") == "00123"
    for no_id in ("cover.png", "img00123.png", "123456.png", "12a.png"):
        assert synmirror.id_from_name(no_id) is None
    assert synmirror.id_from_key("7") == "00007" and synmirror.id_from_key("x1") is None


def test_image_without_id_is_skipped_with_a_warning(release, build, caplog):
    made = release(ids=3, layouts={"nat": "folder"})
    (made.paths["nat"] / "cover.png").write_bytes(made.images["nat"]["00000"])
    ds = build("nat", data_dir=str(made.root))
    assert ds["id"] == ["00000", "00001", "00002"]
    assert "cover.png" in caplog.text and "carry no ID" in caplog.text


@pytest.mark.parametrize("name", synmirror.CAPTIONS_NAMES)
def test_both_captions_file_names_are_found(release, build, name):
    made = release(ids=4, captions_name=name)
    assert build("captions", data_dir=str(made.root))["id"] == ["00000", "00001", "00002", "00003"]


def test_downloads_from_url_overrides_over_http(release, build, serve, tmp_path):
    made = release(ids=6, layouts={"nat": "zip", "sd": "tar", "sdxl": "tgz", "infinity": "zip-nested"})
    base = serve(made.root)
    urls = {source: f"{base}/{made.paths[source].name}" for source in SOURCES}
    urls["captions"] = f"{base}/captioin.json"
    sha = hashlib.sha256(made.paths["captions"].read_bytes()).hexdigest()
    ds = build("paired", urls=urls, captions_sha256=sha)
    for source in SOURCES:
        assert raw_images(ds, source) == made.images[source]


def test_data_dir_wins_over_urls_per_file(release, build, serve, tmp_path):
    made = release(ids=4, layouts={"sdxl": "zip"})
    mirror = release.func(tmp_path / "mirror", ids=2, layouts={"sdxl": "zip"})  # a different release
    base = serve(mirror.root)
    (made.root / "captioin.json").unlink()  # captions come from the URL, images from data_dir
    ds = build("sdxl", data_dir=str(made.root), urls={"captions": f"{base}/captioin.json",
                                                       "sdxl": f"{base}/sdxl.zip"})
    assert ds["id"] == ["00000", "00001", "00002", "00003"]
    assert ds["caption"] == [mirror.captions.get(i) for i in ds["id"]]


@pytest.mark.parametrize("config", ["sdxl", "paired", "captions"])
def test_streaming_from_data_dir(release, tmp_path, config):
    made = release(ids=5, layouts={"sdxl": "zip", "nat": "folder", "sd": "zip-nested", "infinity": "zip"})
    builder = synmirror.SynMirror(config_name=config, data_dir=str(made.root), cache_dir=str(tmp_path / "c"))
    rows = list(builder.as_streaming_dataset(split="train"))
    assert [row["id"] for row in rows] == ["00000", "00001", "00002", "00003", "00004"]
    if config == "sdxl":
        assert rows[0]["image"].size == (32, 32)


def test_streaming_refuses_to_download(release, tmp_path):
    builder = synmirror.SynMirror(config_name="sdxl", cache_dir=str(tmp_path / "c"),
                                  urls={"sdxl": "http://127.0.0.1:9/sdxl.zip", "captions": "http://127.0.0.1:9/c"})
    with pytest.raises(synmirror.SynMirrorError, match="streaming reads captions from data_dir only"):
        next(iter(builder.as_streaming_dataset(split="train")))


def test_configs_and_features():
    assert synmirror.CONFIG_NAMES == ("nat", "sd", "sdxl", "infinity", "captions", "paired")
    assert [c.name for c in synmirror.SynMirror.BUILDER_CONFIGS] == list(synmirror.CONFIG_NAMES)
    paired = synmirror.config_features("paired")
    assert list(paired) == ["id", "caption", *SOURCES]
    assert list(synmirror.config_features("sd"))[:4] == ["id", "caption", "image", "source"]
    assert json.dumps(synmirror.config_features("captions").to_dict())
