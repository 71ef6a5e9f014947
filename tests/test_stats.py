"""`python -m builder stats`: tiny CLIP and classifiers built from configs, on an exported fixture whose same-ID
images were made alike."""

import csv
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import synmirror
from conftest import free_port
from builder.__main__ import main as builder_main
from builder.demographics import age_bin, gender
from builder.distances import align, bootstrap, cosine_distance, derangement, groups, pair_measures, scan_pair
from builder.embed import ClipEmbedder, embed_config, load_embeddings
from factory import write_release
from tiny_models import build_tiny_classifier, build_tiny_clip

AGE_LABELS = ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats")
    made = write_release(root / "data", 30, size=48, missing={"sd": ["00003", "00017"]})
    synmirror.export(root / "out", data_dir=made.root, cache_dir=root / "cache")
    return made, root / "out"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


@pytest.fixture(scope="module")
def embedded(exported, clip, tmp_path_factory):
    cache = tmp_path_factory.mktemp("embeddings")
    args = ["stats", "embed", "--dataset", str(exported[1]), "--cache", str(cache), "--model", str(clip),
            "--batch-size", "8"]
    assert builder_main(args) == 0
    return cache


def unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# ----- embed ---------------------------------------------------------------------------------------------------


def test_embeddings_cover_every_image_once_and_match_a_direct_computation(exported, clip, embedded):
    made, out = exported
    for source in synmirror.SOURCES:
        ids, vectors = load_embeddings(embedded, source)
        assert ids == sorted(made.images[source])
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    ids, vectors = load_embeddings(embedded, "sdxl")
    direct = ClipEmbedder(str(clip), batch_size=5)([Image.open(io.BytesIO(made.images["sdxl"][i]))
                                                    for i in ids[:5]])
    assert np.allclose(vectors[:5], direct, atol=1e-5)


def test_embedding_resumes_with_only_what_is_missing(exported, clip, embedded, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(embedded / "nat", cache / "nat")
    embedder = ClipEmbedder(str(clip), batch_size=4)
    assert embed_config(embedder, str(exported[1]), "nat", cache) == 0
    parts = sorted((cache / "nat").glob("*.npz"))
    parts[0].unlink()
    lost = len(np.load(sorted((embedded / "nat").glob("*.npz"))[0])["ids"])
    assert embed_config(embedder, str(exported[1]), "nat", cache) == lost
    assert load_embeddings(cache, "nat")[0] == load_embeddings(embedded, "nat")[0]


def test_embedding_splits_across_accelerate_processes(exported, clip, tmp_path):
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "-m", "builder", "stats",
              "embed", "--dataset", str(exported[1]), "--cache", str(tmp_path), "--model", str(clip),
              "--configs", "sdxl", "--batch-size", "4"]
    result = subprocess.run(launch, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    parts = [np.load(p)["ids"].tolist() for p in (tmp_path / "sdxl").glob("*.npz")]
    assert len(parts) == 2  # one per process
    assert sorted(sum(parts, [])) == sorted(exported[0].images["sdxl"])  # each ID once


# ----- distances -----------------------------------------------------------------------------------------------


def test_scan_matches_brute_force():
    rng = np.random.default_rng(1)
    a = unit(rng.normal(size=(150, 12))).astype(np.float32)
    b = unit(a + 0.8 * rng.normal(size=a.shape)).astype(np.float32)
    scan = scan_pair(a, b, chunk=32)
    distance = 1 - a @ b.T
    same = np.diag(distance)
    negatives = distance[~np.eye(150, dtype=bool)]
    assert np.allclose(scan.same, same, atol=1e-6)
    assert (scan.rank == (distance < same[:, None]).sum(1) + 1).all()
    auc = ((negatives[None] > same[:, None]).mean() + 0.5 * (negatives[None] == same[:, None]).mean())
    measures = pair_measures(scan)
    assert measures["auc"] == pytest.approx(auc, abs=1e-4)
    assert measures["d_prime"] == pytest.approx((negatives.mean() - same.mean())
                                                 / np.sqrt((same.var() + negatives.var()) / 2), rel=1e-4)
    assert measures["median_rank"] == np.median((distance < same[:, None]).sum(1) + 1)
    assert scan.negative_histogram.sum() == len(negatives)


def test_measures_where_the_answer_is_known():
    rng = np.random.default_rng(2)
    n = 400
    a = unit(rng.normal(size=(n, 64))).astype(np.float32)
    twins = pair_measures(scan_pair(a, a.copy()))  # every twin identical: perfectly separated
    assert twins["auc"] == pytest.approx(1, abs=1e-4) and twins["recall@1"] == 1 and twins["median_rank"] == 1
    unrelated = scan_pair(a, unit(rng.normal(size=(n, 64))).astype(np.float32))  # twins no closer than others
    measures, intervals = pair_measures(unrelated), bootstrap(unrelated, 300)
    assert intervals["auc"][0] < 0.5 < intervals["auc"][1] and abs(measures["auc"] - 0.5) < 0.05
    assert measures["recall@10"] < 0.08 and abs(measures["median_rank"] - n / 2) < n / 8
    # Twins at a set similarity: b_i = cos t * a_i + sin t * u_i, u_i orthogonal to a_i.
    noise = rng.normal(size=(n, 64))
    noise = unit(noise - (noise * a).sum(1, keepdims=True) * a)
    close = unit(np.cos(0.3) * a + np.sin(0.3) * noise).astype(np.float32)
    scan = scan_pair(a, close)
    assert np.allclose(scan.same, 1 - np.cos(0.3), atol=1e-5)
    assert pair_measures(scan)["recall@1"] == 1


def test_groups_follow_the_stated_pairing():
    rng = np.random.default_rng(3)
    ids = [synmirror.format_id(i) for i in range(50)]
    embeddings = {s: (ids, unit(rng.normal(size=(50, 8))).astype(np.float32)) for s in synmirror.SOURCES}
    result = groups(embeddings, seed=4)
    assert list(result) == ["Nat vs Nat", "Sd vs Sd", "Sdxl vs Sdxl", "Infinity vs Infinity", "Nat vs Sd",
                            "Nat vs Sdxl", "Nat vs Infinity", "Diff Source & ID"]
    shift = derangement(50, 4)
    assert (shift != np.arange(50)).all() and sorted(shift) == list(range(50))
    nat, sd = embeddings["nat"][1], embeddings["sd"][1]
    assert np.allclose(result["Nat vs Sd"], cosine_distance(nat, sd))
    assert np.allclose(result["Sd vs Sd"], cosine_distance(sd, sd[shift]))
    assert len(result["Diff Source & ID"]) == 150
    common, left, _ = align(ids[:10], nat[:10], ids[5:], sd[5:])
    assert common == ids[5:10] and np.allclose(left, nat[5:10])


def test_clip_distance_on_a_fixture_of_alike_twins(exported, embedded, tmp_path):
    args = ["stats", "clip-distance", "--dataset", str(exported[1]), "--cache", str(embedded),
            "--figures", str(tmp_path), "--resamples", "200"]
    assert builder_main(args) == 0
    report = json.loads((tmp_path / "clip_distance.json").read_text())
    assert len(report["groups"]) == 8 and len(report["pairs"]) == 6
    assert report["pairs"]["nat-sd"]["n"] == 28  # the IDs both hold
    for pair, values in report["pairs"].items():  # same-ID images were made alike: they must stand out
        assert values["auc"] > 0.9 and values["ci95"]["auc"][0] <= values["auc"] <= values["ci95"]["auc"][1], pair
    assert report["groups"]["Nat vs Sdxl"]["median"] < report["groups"]["Nat vs Nat"]["median"]
    assert Image.open(tmp_path / "clip_distance.png").size[0] > 1000
    rows = list(csv.DictReader(open(tmp_path / "clip_distance.csv")))
    assert [row["pair"] for row in rows][:3] == ["nat-sd", "nat-sdxl", "nat-infinity"] and "auc_ci_low" in rows[0]


# ----- demographics --------------------------------------------------------------------------------------------


def test_label_mapping():
    assert [age_bin(x) for x in ["0-2", "3-9", "10-19", "more than 70", 34, "34.9", "unknown"]] == \
        [0, 0, 10, 70, 30, 30, None]
    assert [gender(x) for x in ["female", "Male", "Woman", "man", "other"]] == ["Woman", "Man", "Woman", "Man", None]


def test_demographics_with_classifiers(exported, tmp_path):
    age = build_tiny_classifier(tmp_path / "age", AGE_LABELS, force="20-29")
    sex = build_tiny_classifier(tmp_path / "gender", ["female", "male"], force="female")
    args = ["stats", "demographics", "--dataset", str(exported[1]), "--figures", str(tmp_path / "fig"),
            "--age-model", str(age), "--gender-model", str(sex), "--batch-size", "8"]
    assert builder_main(args) == 0
    summary = json.loads((tmp_path / "fig" / "demographics.json").read_text())
    assert "not upstream's DeepFace" in summary["estimator"]
    assert summary["sources"]["sd"]["images"] == 28 and summary["sources"]["nat"]["images"] == 30
    assert summary["sources"]["nat"]["age"]["20"] == 30 and summary["sources"]["nat"]["gender_percent"]["Woman"] == 100
    for figure in ("age_distribution.png", "gender_distribution.png"):
        assert Image.open(tmp_path / "fig" / figure).size[0] >= 800


def test_demographics_from_a_labels_file(exported, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("config,id,age,gender\nnat,00000,23,Man\nnat,00001,41,Woman\nsd,00000,27,Man\nsd,00001,,Man\n")
    args = ["stats", "demographics", "--dataset", str(exported[1]), "--figures", str(tmp_path / "fig"),
            "--labels", str(labels), "--configs", "nat,sd"]
    assert builder_main(args) == 0
    per_source = json.loads((tmp_path / "fig" / "demographics.json").read_text())["sources"]
    assert per_source["nat"]["age"]["20"] == 1 and per_source["nat"]["age"]["40"] == 1
    assert per_source["sd"]["unmapped"] == 1 and per_source["sd"]["gender_percent"]["Man"] == 100


# ----- grid ----------------------------------------------------------------------------------------------------


def test_grid_has_a_row_per_id_and_a_column_per_source(exported, tmp_path):
    args = ["stats", "grid", "--dataset", str(exported[1]), "--figures", str(tmp_path), "--ids", "3,4,17"]
    assert builder_main(args) == 0
    grid = Image.open(tmp_path / "sample.png")
    assert grid.size[0] > grid.size[1] > 600  # 4 columns, 3 rows of 256 px cells


def test_grid_refuses_unknown_ids(exported, tmp_path):
    args = ["stats", "grid", "--dataset", str(exported[1]), "--figures", str(tmp_path), "--ids", "99"]
    assert builder_main(args) == 2
