"""The dataset card's body, rendered from `dataset_card/card.md` with the configs and the figures beside it."""

from __future__ import annotations

import shutil
import string
from pathlib import Path

import synmirror

CARD = Path(__file__).resolve().parents[1] / "dataset_card"
FIGURES = CARD / "figures"  # where `builder stats` writes the figures the card shows
FIGURE_TITLES = {
    "sample.png": "One row per ID, one column per source",
    "clip_distance.png": "CLIP (openai/clip-vit-base-patch32) cosine distances, upstream's 8 groups",
    "age_distribution.png": "Age per source",
    "gender_distribution.png": "Gender per source",
}


def render_body(out: Path, repo: str, figures: Path = FIGURES) -> str:
    """The card body for the export folder `out`; the figures of `figures` are copied into `out/figures/`."""
    names = [name for name in synmirror.CONFIG_NAMES if (out / name).is_dir()]
    configs = "\n".join(f"- `{name}`" + (f": {synmirror.SOURCES[name].title}" if name in synmirror.SOURCES else "")
                        for name in names)
    shown = []
    for name, title in FIGURE_TITLES.items():
        if (figures / name).is_file():
            (out / "figures").mkdir(exist_ok=True)
            shutil.copyfile(figures / name, out / "figures" / name)
            shown.append(f"**{title}**\n\n![{title}](figures/{name})")
    template = string.Template((CARD / "card.md").read_text())
    return template.substitute(configs=configs, repo=repo,
                               figures="\n\n".join(shown) or "(none yet: run `python -m builder stats`)")
