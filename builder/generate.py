"""Regenerate a synthetic source from the captions: deterministic, resumable, on one GPU or many.

The work is split by ID into chunks of `CHUNK` consecutive IDs (00000-00099, 00100-00199, ...). Each process of a
run takes the chunks whose index modulo the world size is its rank, skipping IDs the work folder already holds, so
the world size may change between runs and every ID is written exactly once. A chunk is written with the export's
`ShardWriter` into a hidden staging folder owned by one process, then renamed to `WORKDIR/<source>/<first>-<last>/`:
a chunk folder that exists is whole, and whatever killed a run costs at most the chunks in flight.

Work folder:
    WORKDIR/captions.json             the captions the prompts came from
    WORKDIR/<source>/<first>-<last>/  train-00000.parquet ...: rows in the source configs' schema, provenance filled
    WORKDIR/<source>/runs/*.json      one manifest per process and run: versions, device, settings, counts
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import heapq
import importlib.metadata
import io
import json
import os
import platform
import shutil
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from datasets.utils import tqdm
from PIL import Image

import synmirror

from .generators import Generator, GeneratorError

CHUNK = 100  # IDs per chunk: the unit of work, of resuming, and of files


def seed_for(source: str, id_: str, base_seed: int = 0) -> int:
    """The seed of one image: the first 8 bytes of sha256(f"{source}/{id_}/{base_seed}"), big-endian, below 2**63.

    A pure function of its arguments: any process, on any machine, in any order, draws the same image; sources and
    base seeds draw independent noise for the same ID."""
    digest = hashlib.sha256(f"{source}/{id_}/{base_seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def written_ids(folder: Path) -> set[str]:
    """The IDs held by the whole chunks of a source's work folder."""
    return {id_ for chunk in chunk_folders(folder) for id_ in synmirror.read_ids(chunk)}


def chunk_folders(folder: Path) -> list[Path]:
    return sorted(path for path in folder.glob("*-*") if path.is_dir() and not path.name.startswith("."))


def plan(ids: list[str], done: set[str], rank: int, world: int, chunk_size: int = CHUNK) -> dict[int, list[str]]:
    """The chunks (index -> IDs still to write) that process `rank` of `world` takes."""
    chunks: dict[int, list[str]] = defaultdict(list)
    for id_ in sorted(set(ids) - done):
        chunks[int(id_) // chunk_size].append(id_)
    return {index: chunk for index, chunk in sorted(chunks.items()) if index % world == rank}


def generate(generator: Generator, source: str, captions: dict[str, str], ids: list[str], workdir: Path, *,
             base_seed: int = 0, rank: int = 0, world: int = 1, chunk_size: int = CHUNK) -> int:
    """Write the images of `ids` that `workdir` lacks and that fall to this process; returns how many.
    `chunk_size` may differ between runs: what is written is found from the files, not from the plan."""
    folder = Path(workdir) / source
    folder.mkdir(parents=True, exist_ok=True)
    chunks = plan(ids, written_ids(folder), rank, world, chunk_size)
    progress = tqdm(total=sum(map(len, chunks.values())), unit="img", desc=f"{source} [{rank + 1}/{world}]",
                    position=rank)
    with ThreadPoolExecutor(1) as encoder:  # PNG encoding overlaps the next batch's generation
        for index, chunk in chunks.items():
            write_chunk(generator, source, captions, chunk, folder / f".chunk-{index:05d}", base_seed, encoder,
                        progress)
    progress.close()
    return progress.n


def write_chunk(generator: Generator, source: str, captions: dict[str, str], ids: list[str], staging: Path,
                base_seed: int, encoder: ThreadPoolExecutor, progress) -> None:
    shutil.rmtree(staging, ignore_errors=True)  # a killed run's leftovers: this process owns the chunk now
    staging.mkdir()
    provenance = generator.provenance()
    pending = None
    with synmirror.ShardWriter(staging, synmirror.config_features(source)) as writer:
        for batch in batched(ids, generator.batch_size):
            seeds = [seed_for(source, id_, base_seed) for id_ in batch]
            images = run_batch(generator, [captions[id_] for id_ in batch], seeds)
            if pending is not None:
                _write_rows(writer, pending.result(), progress)
            pending = encoder.submit(make_rows, source, batch, captions, seeds, images, provenance)
        if pending is not None:
            _write_rows(writer, pending.result(), progress)
    os.replace(staging, staging.parent / f"{ids[0]}-{ids[-1]}")


def batched(items: list[str], size: int) -> Iterator[list[str]]:
    return (items[start:start + size] for start in range(0, len(items), size))


def run_batch(generator: Generator, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
    try:
        return generator(prompts, seeds)
    except torch.OutOfMemoryError as error:
        raise GeneratorError(
            f"out of memory at batch size {generator.batch_size}: rerun with --batch-size "
            f"{max(1, generator.batch_size // 2)} (the chunks already written are kept)"
        ) from error


def make_rows(source: str, ids: list[str], captions: dict[str, str], seeds: list[int],
              images: list[Image.Image], provenance: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for id_, seed, image in zip(ids, seeds, images):
        png = io.BytesIO()
        image.save(png, format="PNG")
        rows.append({"id": id_, "caption": captions[id_], "image": {"bytes": png.getvalue(), "path": f"{id_}.png"},
                     "source": source, **provenance, "seed": seed, "width": image.width, "height": image.height})
    return rows


def _write_rows(writer: synmirror.ShardWriter, rows: list[dict[str, Any]], progress) -> None:
    for row in rows:
        writer.write(row)
    progress.update(len(rows))


def workdir_rows(folder: Path, start_after: Optional[str] = None) -> Iterator[dict[str, Any]]:
    """A source's rows from its work folder, in ID order. Chunks whose ID ranges overlap (a chunk finished over
    two runs) are merged; the others are read one after the other, so few files are open at once."""
    groups: list[list[Path]] = []
    last = ""
    for chunk in sorted(chunk_folders(folder), key=lambda path: path.name.split("-")):
        first, final = chunk.name.split("-")
        if groups and first <= last:
            groups[-1].append(chunk)
        else:
            groups.append([chunk])
        last = max(last, final)
    for group in groups:
        merged = heapq.merge(*(synmirror.read_rows(chunk) for chunk in group), key=lambda row: row["id"])
        yield from (row for row in merged if start_after is None or row["id"] > start_after)


def write_manifest(folder: Path, facts: dict[str, Any]) -> Path:
    path = folder / "runs" / f"{facts['started'].replace(':', '')}-rank{facts['rank']}of{facts['world']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    synmirror.write_atomically(path, json.dumps(facts, indent=2, default=str).encode())
    return path


def run_facts(source: str, settings: Any, device: torch.device, rank: int, world: int, base_seed: int) -> dict:
    import accelerate
    import diffusers
    import transformers

    return {
        "source": source,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rank": rank,
        "world": world,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "base_seed": base_seed,
        "seed_rule": "sha256(f'{source}/{id}/{base_seed}')[:8] >> 1",
        "settings": dataclasses.asdict(settings),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "transformers": transformers.__version__,
                     "accelerate": accelerate.__version__, "synmirror": importlib.metadata.version("synmirror")},
        "host": platform.node(),
    }


def timed(facts: dict, written: int, started: float) -> dict:
    seconds = time.perf_counter() - started
    return {**facts, "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "images": written, "seconds": round(seconds, 3), "images_per_second": round(written / seconds, 4)}


def export_workdir(workdir: Path, out: Path, *, overwrite: bool = False,
                   card_body: Optional[Callable[[Path], str]] = None) -> synmirror.ExportSummary:
    """Write the sources of a work folder, with its captions, as configs of an export folder (the same writer,
    card and validator as `synmirror download`); `paired` too when every source is there."""
    captions = synmirror.read_captions(str(workdir / "captions.json"))
    sources = [source for source in synmirror.SOURCES if chunk_folders(workdir / source)]
    if not sources:
        raise synmirror.SynMirrorError(f"{workdir} holds no generated source; run `python -m builder generate` first")
    wanted = [*sources, synmirror.CAPTIONS_CONFIG]
    if len(sources) == len(synmirror.SOURCES):
        wanted.append(synmirror.PAIRED_CONFIG)
    names = synmirror.export_order(wanted)
    if overwrite:
        synmirror.discard_configs(out, names)
    return synmirror.write_export(out, names, captions, lambda source, after: workdir_rows(workdir / source, after),
                                  card_body=card_body)
