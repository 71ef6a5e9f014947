"""`synmirror download`: the Parquet + card folder, read back through `load_dataset` as a user would."""

import os
import shutil
import signal
import subprocess
import sys
import time

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import synmirror

SOURCES = list(synmirror.SOURCES)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A release with missing images and an uncaptioned one, exported whole through the command."""
    from factory import write_release

    root = tmp_path_factory.mktemp("export")
    made = write_release(root / "data", 130, missing={"sd": ["00002", "00129"], "nat": ["00000"]},
                         uncaptioned=["00077"])
    out = root / "synmirror"
    code = synmirror.main(["download", "--data-dir", str(made.root), "--out", str(out),
                           "--cache-dir", str(root / "cache")])
    assert code == 0
    return made, out


def stored(rows, column):
    return {row["id"]: row[column]["bytes"] for row in rows if row[column] is not None}


@pytest.mark.parametrize("config", synmirror.CONFIG_NAMES)
@pytest.mark.parametrize("streaming", [False, True])
def test_every_config_round_trips_through_load_dataset(exported, config, streaming):
    made, out = exported
    ds = datasets.load_dataset(str(out), config, split="train", streaming=streaming)
    if not streaming:
        assert ds.num_rows == len(list(ds))
    image_columns = [c for c, f in synmirror.config_features(config).items() if isinstance(f, datasets.Image)]
    for column in image_columns:
        ds = ds.cast_column(column, datasets.Image(decode=False))
    rows = list(ds)
    ids = [row["id"] for row in rows]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    if config == "captions":
        assert {row["id"]: row["caption"] for row in rows} == made.captions
    elif config == "paired":
        assert ids == [synmirror.format_id(i) for i in range(130)]
        for source in SOURCES:
            assert stored(rows, source) == made.images[source]
        by_id = {row["id"]: row for row in rows}
        assert by_id["00002"]["sd"] is None and by_id["00000"]["nat"] is None and by_id["00077"]["caption"] is None
    else:
        assert stored(rows, "image") == made.images[config]
        assert [row["caption"] for row in rows] == [made.captions.get(i) for i in ids]


def test_images_decode_after_loading(exported):
    _, out = exported
    rows = list(datasets.load_dataset(str(out), "paired", split="train", streaming=True))  # read to the end:
    assert rows[0]["nat"] is None and rows[0]["sdxl"].size == (32, 32)  # pyarrow may hang at exit otherwise


def test_folder_layout_and_card(exported):
    made, out = exported
    assert sorted(p.name for p in out.iterdir()) == ["README.md", *sorted(synmirror.CONFIG_NAMES)]
    assert sorted(datasets.get_dataset_config_names(str(out))) == sorted(synmirror.CONFIG_NAMES)
    card = datasets.load_dataset_builder(str(out)).config.name  # the default config
    assert card == "paired"
    text = (out / "README.md").read_text()
    assert text.count("default: true") == 1
    for config in synmirror.CONFIG_NAMES:
        assert [p.name for p in (out / config).iterdir()] == ["train-00000-of-00001.parquet"]
    info = datasets.load_dataset_builder(str(out), "sd").info
    assert info.splits["train"].num_examples == 128 and info.splits["train"].num_bytes > 0


def test_parquet_is_written_for_the_viewer(exported):
    _, out = exported
    for config in synmirror.CONFIG_NAMES:
        parquet = pq.ParquetFile(next((out / config).glob("*.parquet")))
        footer = parquet.metadata
        sizes = [footer.row_group(i).num_rows for i in range(footer.num_row_groups)]
        if config != "captions":
            assert max(sizes) <= 100 and footer.num_rows > 100 and len(sizes) >= 2
        assert b"huggingface" in parquet.schema_arrow.metadata
        assert footer.row_group(0).column(0).has_offset_index and footer.row_group(0).column(0).has_column_index


def test_summary_reports_missing_ids(exported, capsys, tmp_path):
    made, out = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert synmirror.main(["download", "--data-dir", str(made.root), "--out", str(copy)]) == 0
    printed = capsys.readouterr().out
    assert "sd: 2 captioned IDs without an image ['00002', '00129']" in printed  # 00077 has no caption
    assert "kept" in printed and "written" not in printed.split("status", 1)[1]


def test_shards_are_split_by_size_and_still_load(release, tmp_path):
    made = release(ids=150, size=48, layouts={"sdxl": "zip"})
    out = tmp_path / "out"
    synmirror.export(out, ["sdxl"], data_dir=made.root, cache_dir=tmp_path / "c", max_shard_bytes=100_000)
    shards = sorted(p.name for p in (out / "sdxl").iterdir())
    assert len(shards) > 2 and shards[0] == f"train-00000-of-{len(shards):05d}.parquet"
    assert all(p.stat().st_size <= 100_000 for p in (out / "sdxl").iterdir())
    ds = datasets.load_dataset(str(out), "sdxl", split="train")
    assert ds["id"] == sorted(made.images["sdxl"])


def test_paired_alone_brings_its_sources(release, tmp_path):
    made = release(ids=5)
    summary = synmirror.export(tmp_path / "out", ["paired"], data_dir=made.root, cache_dir=tmp_path / "c")
    assert summary.written == [*SOURCES, "paired"]
    assert datasets.load_dataset(str(tmp_path / "out"), "paired", split="train").num_rows == 5


# ----- the validator -------------------------------------------------------------------------------------------


@pytest.fixture
def valid_copy(exported, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(exported[1], copy)
    synmirror.validate_export(copy)
    return copy


def edit_card(folder, old, new, count=1):
    text = (folder / "README.md").read_text()
    assert old in text
    (folder / "README.md").write_text(text.replace(old, new, count))


def problems(folder, load=True):
    with pytest.raises(synmirror.SynMirrorError) as raised:
        synmirror.validate_export(folder, load=load)
    return str(raised.value)


def test_validator_rejects_no_default(valid_copy):
    edit_card(valid_copy, "  default: true\n", "")
    assert "0 configs are marked `default: true`" in problems(valid_copy)


def test_validator_rejects_two_defaults(valid_copy):
    edit_card(valid_copy, "- config_name: sd\n", "- config_name: sd\n  default: true\n")
    assert "2 configs are marked" in problems(valid_copy)


def test_validator_rejects_an_empty_glob(valid_copy):
    shutil.rmtree(valid_copy / "infinity")
    assert "infinity: its data_files match no file" in problems(valid_copy)


def test_validator_rejects_an_oversized_row_group(valid_copy):
    shard = next((valid_copy / "sdxl").glob("*.parquet"))
    table = pq.read_table(shard)
    pq.write_table(table, shard, row_group_size=1000)
    assert "a row group of 130 rows, over the 100" in problems(valid_copy, load=False)


def test_validator_rejects_missing_features_and_page_index(valid_copy):
    shard = next((valid_copy / "nat").glob("*.parquet"))
    table = pq.read_table(shard)
    pq.write_table(table.replace_schema_metadata(None), shard, row_group_size=100, write_page_index=False)
    found = problems(valid_copy, load=False)
    assert "no `datasets` features in the Parquet schema" in found and "no page index" in found


def test_validator_rejects_a_root_py_file(valid_copy):
    (valid_copy / "copy.py").write_text("# a loading script\n")
    assert "copy.py: a .py file at the root" in problems(valid_copy)


def test_validator_rejects_counts_that_differ_from_the_card(valid_copy):
    edit_card(valid_copy, "num_examples: 128\n", "num_examples: 127\n")
    assert "sd: README.md says 127 rows, the shards hold 128" in problems(valid_copy)


def test_validator_rejects_unsorted_rows(valid_copy):
    shard = next((valid_copy / "captions").glob("*.parquet"))
    table = pq.read_table(shard)
    pq.write_table(table.take(pa.array(list(reversed(range(table.num_rows))))), shard)
    assert "captions: rows are not in strictly increasing ID order" in problems(valid_copy, load=False)


def test_validator_rejects_a_missing_card(valid_copy):
    (valid_copy / "README.md").unlink()
    assert "README.md (the dataset card) is missing" in problems(valid_copy)


def test_validate_command(valid_copy, capsys):
    assert synmirror.main(["validate", str(valid_copy)]) == 0
    (valid_copy / "x.py").write_text("")
    assert synmirror.main(["validate", str(valid_copy)]) == 2


# ----- reruns --------------------------------------------------------------------------------------------------


def test_run_killed_mid_write_resumes_into_a_complete_folder(release, tmp_path):
    made = release(ids=400, size=64, layouts={"nat": "zip"})
    out = tmp_path / "out"
    command = [sys.executable, "-m", "synmirror", "download", "nat", "--data-dir", str(made.root), "--out", str(out),
               "--cache-dir", str(tmp_path / "c"), "--max-shard-size", "30KB"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = out / ".incomplete" / "nat"
    deadline = time.monotonic() + 60
    while len(synmirror.shard_paths(staging)) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    kept = {p.name: p.stat().st_mtime_ns for p in synmirror.shard_paths(staging)}
    assert len(kept) >= 3, "the run ended before it could be killed mid-write"
    assert not (out / "nat").exists() and not (out / "README.md").exists()  # nothing a loader would take for whole

    assert subprocess.run(command, capture_output=True, timeout=120).returncode == 0
    synmirror.validate_export(out)
    ds = datasets.load_dataset(str(out), "nat", split="train")
    assert ds["id"] == sorted(made.images["nat"])  # every ID once, in order
    assert not (out / ".incomplete").exists()
    shards = synmirror.shard_paths(out / "nat")
    resumed = [p for p in shards if p.stat().st_mtime_ns in kept.values()]
    assert len(resumed) >= len(kept) - 1  # the whole shards of the killed run were kept, not rewritten


def test_rerun_keeps_complete_configs_and_overwrite_rewrites(release, tmp_path):
    made = release(ids=4)
    out = tmp_path / "out"
    synmirror.export(out, ["sdxl"], data_dir=made.root, cache_dir=tmp_path / "c")
    again = synmirror.export(out, ["sdxl", "captions"], data_dir=made.root, cache_dir=tmp_path / "c")
    assert again.kept == ["sdxl"] and again.written == ["captions"]
    assert synmirror.export(out, ["sdxl"], data_dir=made.root, cache_dir=tmp_path / "c",
                            overwrite=True).written == ["sdxl"]
    assert sorted(datasets.get_dataset_config_names(str(out))) == ["captions", "sdxl"]


def test_heavy_rows_close_row_groups_by_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(synmirror, "ROW_GROUP_BYTES", 50_000)  # as 100 MB is to paired rows of four large images
    features = synmirror.config_features("captions")
    rows = [{"id": synmirror.format_id(i), "caption": "x" * 10_000} for i in range(30)]
    with synmirror.ShardWriter(tmp_path, features) as writer:
        for row in rows:
            writer.write(row)
    footer = pq.ParquetFile(synmirror.shard_paths(tmp_path)[0]).metadata
    assert [footer.row_group(i).num_rows for i in range(footer.num_row_groups)] == [5] * 6
    assert list(synmirror.read_rows(tmp_path)) == rows


def test_validator_rejects_a_row_group_the_viewer_cannot_read(valid_copy, monkeypatch):
    monkeypatch.setattr(synmirror, "VIEWER_ROW_GROUP_BYTES", 1000)
    assert "bytes, over the 1000 the viewer reads" in problems(valid_copy, load=False)


def test_rerun_with_nothing_to_write_needs_no_network(release, tmp_path):
    made = release(ids=4)
    out = tmp_path / "out"
    synmirror.export(out, ["sdxl", "captions", "paired"], data_dir=made.root, cache_dir=tmp_path / "c")
    unreachable = {name: "http://127.0.0.1:9/x" for name in [*SOURCES, "captions"]}
    again = synmirror.export(out, ["sdxl", "captions", "paired"], urls=unreachable, cache_dir=tmp_path / "c")
    assert again.written == [] and "paired" in again.kept
    assert [report.captions_without_image for report in again.reports] == [[]] * 4
