"""CLIP image embeddings of SynMirror configs, cached on disk with their IDs: batched, resumable, and split across
the processes of `accelerate launch`.

Cache: `<cache>/<config>/<first>-<last>.npz`, each holding `ids` and L2-normalised float32 `embeddings`, written
under a temporary name and renamed, so a file that exists is whole. A rerun embeds only the IDs no file holds;
the processes of one run read disjoint rows (`datasets.distributed.split_dataset_by_node`), so each ID is
embedded once whatever the world size.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterator, Optional

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node
from datasets.utils import tqdm
from PIL import Image

DEFAULT_CLIP = "openai/clip-vit-base-patch32"  # the model of upstream's CLIP-distance figure


class ClipEmbedder:
    """Images in, L2-normalised CLIP image embeddings out."""

    def __init__(self, model: str = DEFAULT_CLIP, device: Optional[torch.device] = None, batch_size: int = 64):
        from transformers import CLIPModel, CLIPProcessor

        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.processor = CLIPProcessor.from_pretrained(model)
        self.model = CLIPModel.from_pretrained(model).to(self.device).eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        pixels = self.processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
        features = self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device))
        features = getattr(features, "pooler_output", features)  # transformers 5 returns an output object
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()


def cached_ids(folder: Path) -> set[str]:
    return {id_ for part in sorted(folder.glob("*.npz")) for id_ in np.load(part)["ids"].tolist()}


def load_embeddings(cache: Path, config: str) -> tuple[list[str], np.ndarray]:
    """(IDs sorted, embeddings in that order) of a config's cache."""
    parts = [np.load(part) for part in sorted((cache / config).glob("*.npz"))]
    if not parts:
        raise FileNotFoundError(f"no embeddings of {config} in {cache}; run `python -m builder stats embed` first")
    ids = np.concatenate([part["ids"] for part in parts])
    vectors = np.concatenate([part["embeddings"] for part in parts])
    order = np.argsort(ids)
    return ids[order].tolist(), vectors[order]


def save_part(folder: Path, ids: list[str], vectors: np.ndarray) -> None:
    path = folder / f"{ids[0]}-{ids[-1]}.npz"
    temporary = folder / f".{path.stem}.tmp.npz"
    np.savez(temporary, ids=np.array(ids), embeddings=vectors.astype(np.float32))
    os.replace(temporary, path)


def image_rows(dataset: str, config: str, rank: int, world: int) -> Iterator[tuple[str, bytes]]:
    """(id, image bytes) of this process's share of a config, read to the end (undecoded)."""
    stream = datasets.load_dataset(dataset, config, split="train", streaming=True)
    if "image" not in stream.features:
        raise ValueError(f"config {config} has no `image` column; embed the source configs")
    stream = split_dataset_by_node(stream.cast_column("image", datasets.Image(decode=False)), rank, world)
    for row in stream:
        yield row["id"], row["image"]["bytes"]


def embed_config(embedder: ClipEmbedder, dataset: str, config: str, cache: Path, *, rank: int = 0, world: int = 1,
                 part_size: int = 1024) -> int:
    """Embed what the cache lacks of this process's share of `config`; returns how many images were embedded."""
    folder = cache / config
    folder.mkdir(parents=True, exist_ok=True)
    done = cached_ids(folder)
    ids: list[str] = []
    images: list[Image.Image] = []
    part_ids: list[str] = []
    part_vectors: list[np.ndarray] = []
    embedded = 0
    progress = tqdm(desc=f"embed {config} [{rank + 1}/{world}]", unit="img", position=rank)

    def flush_batch():
        part_vectors.append(embedder(images))
        part_ids.extend(ids)
        progress.update(len(ids))
        ids.clear()
        images.clear()

    def flush_part():
        save_part(folder, list(part_ids), np.concatenate(part_vectors))
        part_ids.clear()
        part_vectors.clear()

    for id_, data in image_rows(dataset, config, rank, world):
        if id_ in done:
            continue
        ids.append(id_)
        images.append(Image.open(io.BytesIO(data)))
        embedded += 1
        if len(ids) == embedder.batch_size:
            flush_batch()
            if len(part_ids) >= part_size:
                flush_part()
    if ids:
        flush_batch()
    if part_ids:
        flush_part()
    progress.close()
    return embedded
