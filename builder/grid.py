"""A sample grid like upstream's sample.png, ordered: one row per ID, one column per source."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import datasets
import numpy as np
from PIL import Image

import synmirror


def pick_ids(dataset: str, count: int, seed: int) -> list[str]:
    """`count` IDs drawn at random (seeded) among those of the `captions` config."""
    stream = datasets.load_dataset(dataset, synmirror.CAPTIONS_CONFIG, split="train", streaming=True, columns=["id"])
    ids = [row["id"] for row in stream]
    return sorted(np.random.default_rng(seed).choice(ids, size=min(count, len(ids)), replace=False).tolist())


def paired_rows(dataset: str, ids: list[str]) -> dict[str, dict]:
    """The `paired` rows of `ids`; the ID filter skips the row groups that cannot hold them."""
    stream = datasets.load_dataset(dataset, synmirror.PAIRED_CONFIG, split="train", streaming=True,
                                   filters=[("id", "in", ids)])
    for source in synmirror.SOURCES:
        stream = stream.cast_column(source, datasets.Image(decode=False))
    return {row["id"]: row for row in stream}


def sample_grid(dataset: str, out: Path, *, ids: Optional[list[str]] = None, count: int = 4, seed: int = 0,
                cell: int = 256) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = ids or pick_ids(dataset, count, seed)
    rows = paired_rows(dataset, ids)
    missing = sorted(set(ids) - rows.keys())
    if missing:
        raise synmirror.SynMirrorError(f"IDs {missing} are not in the paired config of {dataset}")
    sources = list(synmirror.SOURCES)
    inches = cell / 100
    figure, axes = plt.subplots(len(ids), len(sources), figsize=(inches * len(sources), inches * len(ids) + 0.4),
                                squeeze=False)
    for r, id_ in enumerate(ids):
        for c, source in enumerate(sources):
            axis = axes[r][c]
            axis.set_xticks([])
            axis.set_yticks([])
            image = rows[id_][source]
            if image is None:
                axis.text(0.5, 0.5, "missing", ha="center", va="center", transform=axis.transAxes)
            else:
                axis.imshow(Image.open(io.BytesIO(image["bytes"])).convert("RGB").resize((cell, cell)))
            if r == 0:
                axis.set_title(source, fontsize=12)
            if c == 0:
                axis.set_ylabel(id_, fontsize=10)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
