"""`python -m builder generate`: tiny diffusers pipelines built from configs, a stand-in Infinity checkout."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

import synmirror
from conftest import free_port
from builder.__main__ import main as builder_main
from builder.generate import (chunk_folders, generate, plan, seed_for, workdir_rows,
                              written_ids)
from builder.generators import GeneratorError, InfinityGenerator, InfinitySettings
from tiny_models import build_tiny_sd, build_tiny_sdxl

HERE = Path(__file__).parent
TINY = ["--steps", "2", "--width", "32", "--height", "32"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"sd": build_tiny_sd(root / "sd"), "sdxl": build_tiny_sdxl(root / "sdxl")}


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    path = tmp_path_factory.mktemp("captions") / "caption.json"
    words = ["a baby in a blue chair", "a man with glasses", "a woman smiling", "a child, outdoors"]
    path.write_text(json.dumps({synmirror.format_id(i): f"{words[i % 4]} {i}" for i in range(40)}))
    return path


def run(source, workdir, models, captions, *extra):
    args = ["generate", "--source", source, "--out", str(workdir), "--captions", str(captions),
            "--model", str(models[source]), *TINY, *extra]
    assert builder_main(args) == 0


def pixels(workdir, source):
    rows = list(workdir_rows(workdir / source))
    return {row["id"]: np.asarray(Image.open(io.BytesIO(row["image"]["bytes"]))).astype(int) for row in rows}


@pytest.mark.parametrize("source", ["sd", "sdxl"])
def test_rerun_is_bit_identical_and_rows_carry_provenance(tmp_path, models, captions, source):
    run(source, tmp_path / "a", models, captions, "--ids", "0-5", "--batch-size", "2")
    run(source, tmp_path / "b", models, captions, "--ids", "0-5", "--batch-size", "2")
    rows_a = list(workdir_rows(tmp_path / "a" / source))
    rows_b = list(workdir_rows(tmp_path / "b" / source))
    assert [r["image"]["bytes"] for r in rows_a] == [r["image"]["bytes"] for r in rows_b]
    assert [r["id"] for r in rows_a] == [synmirror.format_id(i) for i in range(6)]
    first = rows_a[0]
    assert first["seed"] == seed_for(source, "00000") and first["source"] == source
    assert first["model"] == str(models[source]) and first["steps"] == 2 and (first["width"], first["height"]) == (32, 32)
    assert first["scheduler"] == {"sd": "DDIMScheduler", "sdxl": "EulerDiscreteScheduler"}[source]
    assert first["caption"] == json.loads(captions.read_text())["00000"]
    assert len({r["image"]["bytes"] for r in rows_a}) == 6  # different seeds and prompts, different images


def test_batch_sizes_agree_within_rounding(tmp_path, models, captions):
    run("sd", tmp_path / "one", models, captions, "--ids", "0-3", "--batch-size", "1")
    run("sd", tmp_path / "three", models, captions, "--ids", "0-3", "--batch-size", "3")
    one, three = pixels(tmp_path / "one", "sd"), pixels(tmp_path / "three", "sd")
    assert one.keys() == three.keys()
    for id_ in one:
        assert np.abs(one[id_] - three[id_]).max() <= 2, id_


def test_seeds_are_a_pure_function():
    assert seed_for("sdxl", "00001") == seed_for("sdxl", "00001") < 2**63
    assert len({seed_for("sdxl", "00001"), seed_for("sd", "00001"), seed_for("sdxl", "00002"),
                seed_for("sdxl", "00001", 1)}) == 4


def test_plan_splits_by_chunk_with_no_overlap_and_no_gap():
    ids = [synmirror.format_id(i) for i in range(1000)]
    done = {synmirror.format_id(i) for i in range(0, 1000, 7)}
    plans = [plan(ids, done, rank, 3) for rank in range(3)]
    taken = [id_ for p in plans for chunk in p.values() for id_ in chunk]
    assert sorted(taken) == sorted(set(ids) - done)
    assert all(index % 3 == rank for rank, p in enumerate(plans) for index in p)


def test_killed_run_resumes_with_every_id_exactly_once(tmp_path, models, captions):
    workdir = tmp_path / "work"
    command = [sys.executable, "-m", "builder", "generate", "--source", "sd", "--out", str(workdir),
               "--captions", str(captions), "--model", str(models["sd"]), *TINY, "--chunk-size", "3",
               "--batch-size", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(chunk_folders(workdir / "sd")) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = {chunk.name for chunk in chunk_folders(workdir / "sd")}
    assert 2 <= len(before) and len(written_ids(workdir / "sd")) < 40, "the run ended before it could be killed"

    assert subprocess.run(command, capture_output=True, timeout=300).returncode == 0
    ids = [row["id"] for row in workdir_rows(workdir / "sd")]
    assert ids == [synmirror.format_id(i) for i in range(40)]  # each once, in order
    assert before <= {chunk.name for chunk in chunk_folders(workdir / "sd")}  # finished chunks were kept
    assert not list((workdir / "sd").glob(".chunk-*"))


def test_two_processes_under_accelerate_split_the_work(tmp_path, models, captions):
    workdir = tmp_path / "work"
    run("sd", workdir, models, captions, "--limit", "7", "--chunk-size", "4")  # a first run, on one process
    # `--multi_gpu` makes accelerate start the processes through torchrun; without a GPU they run on the CPU.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()),
              "-m", "builder", "generate", "--source", "sd", "--out", str(workdir), "--captions", str(captions),
              "--model", str(models["sd"]), *TINY, "--limit", "30", "--chunk-size", "4"]
    result = subprocess.run(launch, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ids = [row["id"] for row in workdir_rows(workdir / "sd")]
    assert ids == [synmirror.format_id(i) for i in range(30)]  # no overlap, no gap
    manifests = [json.loads(p.read_text()) for p in (workdir / "sd" / "runs").glob("*of2.json")]
    assert sorted(m["rank"] for m in manifests) == [0, 1]
    assert sum(m["images"] for m in manifests) == 23 and all(m["images"] > 0 for m in manifests)


def test_workdir_exports_as_configs_of_a_valid_folder(tmp_path, models, captions):
    workdir = tmp_path / "work"
    run("sdxl", workdir, models, captions, "--ids", "0-9", "--chunk-size", "4")
    run("sdxl", workdir, models, captions, "--ids", "10-12,20")
    assert builder_main(["export", str(workdir), "--out", str(tmp_path / "out")]) == 0
    synmirror.validate_export(tmp_path / "out")
    ds = datasets.load_dataset(str(tmp_path / "out"), "sdxl", split="train")
    assert ds["id"] == [*(synmirror.format_id(i) for i in range(13)), "00020"]
    assert ds[0]["image"].size == (32, 32) and ds[0]["seed"] == seed_for("sdxl", "00000")
    assert sorted(datasets.get_dataset_config_names(str(tmp_path / "out"))) == ["captions", "sdxl"]


class OutOfMemory:
    batch_size = 8

    def __call__(self, prompts, seeds):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def provenance(self):
        return {"model": "m", "revision": None, "steps": 1, "guidance": 1.0, "scheduler": None}


def test_out_of_memory_suggests_a_smaller_batch(tmp_path):
    with pytest.raises(GeneratorError, match="out of memory at batch size 8: rerun with --batch-size 4"):
        generate(OutOfMemory(), "sd", {"00000": "a"}, ["00000"], tmp_path)
    assert not chunk_folders(tmp_path / "sd")


# ----- Infinity, through a stand-in checkout with its functions' signatures -------------------------------------


def infinity_settings(tmp_path, repo="infinity_standin"):
    weights = {name: tmp_path / name for name in ("infinity_2b_reg.pth", "infinity_vae_d32reg.pth")}
    for path in weights.values():
        path.write_bytes(b"weights")
    return InfinitySettings(repo=str(HERE / repo), model_path=str(weights["infinity_2b_reg.pth"]),
                            vae_path=str(weights["infinity_vae_d32reg.pth"]), text_encoder="t5")


def test_infinity_adapter_calls_gen_one_img_per_image_and_converts_bgr(tmp_path):
    generator = InfinityGenerator(infinity_settings(tmp_path), torch.device("cpu"))
    images = generator(["a baby", "a man with glasses"], [7, 300])
    calls = generator.run.CALLS[-2:]
    assert [c["prompt"] for c in calls] == ["a baby", "a man with glasses"] and [c["g_seed"] for c in calls] == [7, 300]
    assert calls[0]["cfg_list"] == 3.0 and calls[0]["tau_list"] == 0.5 and calls[0]["cfg_insertion_layer"] == [0]
    assert images[0].size == (16, 16) and images[0].mode == "RGB"
    assert images[0].getpixel((0, 0)) == (6, 7, 200)  # R = len(prompt), G = seed, B = 200: channels swapped back
    assert images[1].getpixel((3, 3)) == (18, 300 % 256, 200)
    assert generator.provenance()["model"] == "FoundationVision/Infinity:infinity_2b_reg.pth"


def test_infinity_through_the_command(tmp_path, captions):
    settings = infinity_settings(tmp_path)
    args = ["generate", "--source", "infinity", "--out", str(tmp_path / "work"), "--captions", str(captions),
            "--ids", "0-2", "--repo", settings.repo, "--model-path", settings.model_path,
            "--vae-path", settings.vae_path, "--text-encoder", "t5"]
    assert builder_main(args) == 0
    rows = list(workdir_rows(tmp_path / "work" / "infinity"))
    assert [r["id"] for r in rows] == ["00000", "00001", "00002"]
    assert rows[1]["seed"] == seed_for("infinity", "00001") and rows[1]["steps"] == 4


def test_infinity_without_a_checkout_says_what_to_install(tmp_path):
    with pytest.raises(GeneratorError, match="no Infinity checkout at .*FoundationVision/Infinity.*flash-attn"):
        InfinityGenerator(InfinitySettings(repo=str(tmp_path)), torch.device("cpu"))


def test_infinity_without_flash_attn_says_what_to_install(tmp_path):
    with pytest.raises(GeneratorError, match="needs a module that is missing: .*flash_attn.*flash-attn"):
        InfinityGenerator(infinity_settings(tmp_path, "infinity_needs_flash_attn"), torch.device("cpu"))


def test_infinity_refuses_batches(tmp_path):
    settings = infinity_settings(tmp_path)
    settings.batch_size = 4
    with pytest.raises(GeneratorError, match="one image at a time"):
        InfinityGenerator(settings, torch.device("cpu"))


def test_export_renders_the_card_with_the_figures(tmp_path, models, captions):
    workdir = tmp_path / "work"
    run("sd", workdir, models, captions, "--ids", "0-2")
    figures = tmp_path / "figures"
    figures.mkdir()
    Image.new("RGB", (8, 8)).save(figures / "clip_distance.png")
    args = ["export", str(workdir), "--out", str(tmp_path / "out"), "--repo", "someone/synmirror",
            "--figures", str(figures)]
    assert builder_main(args) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert 'load_dataset("someone/synmirror", "sdxl"' in card and "- `sd`: Stable Diffusion 2.1" in card
    assert "![CLIP (openai/clip-vit-base-patch32)" in card and (tmp_path / "out" / "figures" / "clip_distance.png").is_file()
    synmirror.validate_export(tmp_path / "out")


def test_ids_from_ranges_lists_and_files(tmp_path):
    from builder.__main__ import parse_ids

    captions = {synmirror.format_id(i): "c" for i in range(20)}
    assert parse_ids("3-5,9", captions) == ["00003", "00004", "00005", "00009"]
    listing = tmp_path / "ids.txt"
    listing.write_text("00001\n7\n10-11\n")
    assert parse_ids(str(listing), captions) == ["00001", "00007", "00010", "00011"]
    assert parse_ids(None, captions) == list(captions)
    with pytest.raises(synmirror.SynMirrorError, match="1 requested IDs have no caption, e.g. \\['00020'\\]"):
        parse_ids("19-20", captions)
