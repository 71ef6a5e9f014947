"""Age and gender per image, per source: upstream's age histogram and gender bar chart, and per-source tables.

Upstream labelled its images with DeepFace. Here the estimator is pluggable: any two Hugging Face
image-classification models (age, gender), whose labels are mapped to 10-year age bins and `Man`/`Woman`, or a
precomputed labels file (CSV: config,id,age,gender; age a number or a range label). The figures say which
estimator made them: its numbers are comparable between sources, not with upstream's.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Iterable, Iterator, Optional

import datasets
import torch
from PIL import Image

DEFAULT_AGE_MODEL = "nateraw/vit-age-classifier"  # labels 0-2, 3-9, 10-19, ..., 60-69, more than 70
DEFAULT_GENDER_MODEL = "rizvandwiki/gender-classification"  # labels female, male
AGE_BINS = tuple(range(0, 80, 10))  # 0-9 ... 70+, as upstream's histogram
GENDERS = ("Man", "Woman")


def age_bin(label) -> Optional[int]:
    """The 10-year bin (its lower edge) of an age or an age label: 34 -> 30, "3-9" -> 0, "more than 70" -> 70."""
    numbers = [float(n) for n in re.findall(r"\d+(?:\.\d+)?", str(label))]
    if not numbers:
        return None
    age = numbers[0] if len(numbers) == 1 else (numbers[0] + numbers[1]) / 2
    return min(int(age // 10) * 10, AGE_BINS[-1])


def gender(label) -> Optional[str]:
    word = str(label).strip().lower()
    if word in ("woman", "women", "female", "f", "girl"):
        return "Woman"
    if word in ("man", "men", "male", "m", "boy"):
        return "Man"
    return None


def estimator_note(age_model: str, gender_model: str) -> str:
    return (f"Age and gender estimated by {age_model} and {gender_model}, not upstream's DeepFace: "
            "compare sources with each other, not these numbers with upstream's.")


def classify(dataset: str, configs: Iterable[str], age_model: str, gender_model: str, *, batch_size: int = 32,
             device: Optional[str] = None) -> Iterator[dict]:
    """One label row per image of each config: config, id, age (the model's label), gender (its label)."""
    from transformers import pipeline

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    age_classifier = pipeline("image-classification", model=age_model, device=device)
    gender_classifier = pipeline("image-classification", model=gender_model, device=device)
    for config in configs:
        stream = datasets.load_dataset(dataset, config, split="train", streaming=True)
        stream = stream.cast_column("image", datasets.Image(decode=False))
        for batch in stream.iter(batch_size=batch_size):
            images = [Image.open(io.BytesIO(image["bytes"])).convert("RGB") for image in batch["image"]]
            ages = age_classifier(images, top_k=1)
            genders = gender_classifier(images, top_k=1)
            for id_, age, sex in zip(batch["id"], ages, genders):
                yield {"config": config, "id": id_, "age": age[0]["label"], "gender": sex[0]["label"]}


def read_labels(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    missing = {"config", "id", "age", "gender"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path}: a labels file needs the columns config,id,age,gender; {sorted(missing)} missing")
    return rows


def tables(rows: list[dict]) -> dict[str, dict]:
    """Per config: counts and percentages of each age bin and gender, and how many labels could not be mapped."""
    result: dict[str, dict] = {}
    for row in rows:
        table = result.setdefault(row["config"], {"images": 0, "age": dict.fromkeys(map(str, AGE_BINS), 0),
                                                  "gender": dict.fromkeys(GENDERS, 0), "unmapped": 0})
        table["images"] += 1
        bin_, sex = age_bin(row["age"]), gender(row["gender"])
        if bin_ is None or sex is None:
            table["unmapped"] += 1
        if bin_ is not None:
            table["age"][str(bin_)] += 1
        if sex is not None:
            table["gender"][sex] += 1
    for table in result.values():
        for key in ("age", "gender"):
            counted = sum(table[key].values()) or 1
            table[f"{key}_percent"] = {k: round(100 * v / counted, 2) for k, v in table[key].items()}
    return result


def report(rows: list[dict], out: Path, note: str) -> dict:
    """Write demographics.csv (per image), demographics.json (per-source tables), age_distribution.png and
    gender_distribution.png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "demographics.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, ["config", "id", "age", "gender", "age_bin", "gender_label"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**{k: row[k] for k in ("config", "id", "age", "gender")},
                             "age_bin": age_bin(row["age"]), "gender_label": gender(row["gender"])})
    summary = {"estimator": note, "sources": tables(rows)}
    (out / "demographics.json").write_text(json.dumps(summary, indent=2))
    plot(summary["sources"], out, note)
    return summary


def plot(per_source: dict[str, dict], out: Path, note: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sources = sorted(per_source)
    figure, axes = plt.subplots(figsize=(10, 6))
    bottom = np.zeros(len(AGE_BINS))
    for source, color in zip(sources, plt.get_cmap("Set2").colors):
        counts = np.array([per_source[source]["age"][str(b)] for b in AGE_BINS])
        axes.bar(AGE_BINS, counts, width=10, align="edge", bottom=bottom, color=color, edgecolor="black",
                 label=source)
        bottom += counts
    axes.set_xticks(list(AGE_BINS) + [AGE_BINS[-1] + 10])
    axes.set_title("Age Distribution", fontsize=16, fontweight="bold")
    axes.set_xlabel("Age", fontsize=12)
    axes.set_ylabel("Count", fontsize=12)
    axes.legend(title="Dataset")
    figure.text(0.01, 0.005, note, fontsize=7, color="#555555")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    figure.savefig(out / "age_distribution.png", dpi=100)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(8, 6))
    width = 0.8 / max(len(sources), 1)
    for index, source in enumerate(sources):
        shares = [per_source[source]["gender_percent"][g] for g in GENDERS]
        axes.bar(np.arange(len(GENDERS)) - 0.4 + width * (index + 0.5), shares, width, label=source)
    axes.set_xticks(range(len(GENDERS)), GENDERS)
    axes.set_title("Gender Distribution", fontsize=16, fontweight="bold")
    axes.set_xlabel("Gender")
    axes.set_ylabel("Percentage")
    axes.legend(title="Dataset")
    figure.text(0.01, 0.005, note, fontsize=6, color="#555555")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    figure.savefig(out / "gender_distribution.png", dpi=100)
    plt.close(figure)
