"""CLIP-space distances between SynMirror sources: upstream's 8-group box plot, and measures that say how well an
image's twin (same ID, other source) stands out among all candidates of that source.

Distances are cosine distances, 1 - cos, between L2-normalised embeddings, over the IDs both sides hold.

The 8 groups (one distance per ID and group; `derangement` is a seeded random permutation with no fixed point):
- `<S> vs <S>` (same source, different IDs): image i of S against image derangement(i) of S;
- `Nat vs <S>` (same ID, different sources): image i of nat against image i of S;
- `Diff Source & ID`: image i of nat against image derangement(i) of each synthetic source, pooled.

Per source pair (A, B), with every other ID of B as the negatives of an ID (all pairs, through chunked matrix
products: no N x N matrix is ever held, no Python loop runs over pairs):
- ROC-AUC: the probability that a same-ID distance is below a different-ID distance (ties count half), from
  histograms of 2**16 bins over [0, 2] (resolution 3e-5);
- recall@1/5/10 and median rank of each A image's twin among all N images of B (rank 1 = nearest);
- d' = (mean_diff - mean_same) / sqrt((var_same + var_diff) / 2);
- 95% bootstrap intervals over IDs (resampling IDs, the different-ID distribution held fixed).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

BINS = 2**16
RECALL_AT = (1, 5, 10)
GROUP_ORDER = ("Nat vs Nat", "Sd vs Sd", "Sdxl vs Sdxl", "Infinity vs Infinity", "Nat vs Sd", "Nat vs Sdxl",
               "Nat vs Infinity", "Diff Source & ID")


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A permutation of range(n) with no fixed point: a random cyclic shift of a random order."""
    order = np.random.default_rng(seed).permutation(n)
    result = np.empty(n, dtype=np.int64)
    result[order] = np.roll(order, -1)
    return result


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine distance of two aligned sets of normalised embeddings."""
    return 1.0 - np.einsum("ij,ij->i", a, b)


def align(ids_a: list[str], a: np.ndarray, ids_b: list[str], b: np.ndarray):
    """The embeddings of the IDs both sides hold, in ID order."""
    common = sorted(set(ids_a) & set(ids_b))
    index_a = {id_: i for i, id_ in enumerate(ids_a)}
    index_b = {id_: i for i, id_ in enumerate(ids_b)}
    return common, a[[index_a[i] for i in common]], b[[index_b[i] for i in common]]


@dataclasses.dataclass
class PairScan:
    """What one pass over all pairs of two sources gives, per ID and in aggregate."""

    same: np.ndarray  # same-ID distance of each ID
    rank: np.ndarray  # rank of each ID's twin among all candidates (1 = nearest)
    negative_histogram: np.ndarray  # counts of different-ID distances in BINS bins over [0, 2]
    negative_similarity_sum: float  # moments of the different-ID similarities (1 - distance): near zero, so their
    negative_similarity_squares: float  # sums lose no precision to cancellation
    negatives: int

    @property
    def negative_mean(self) -> float:
        return 1.0 - self.negative_similarity_sum / self.negatives

    @property
    def negative_var(self) -> float:
        mean = self.negative_similarity_sum / self.negatives
        return self.negative_similarity_squares / self.negatives - mean**2


def scan_pair(a: np.ndarray, b: np.ndarray, *, chunk: int = 512, device: str = "cpu") -> PairScan:
    """Every (i, j) distance between aligned embeddings `a` and `b`, a block of `chunk` rows at a time: each block
    is one matrix product, then one pass each for ranks, the histogram and the moments (the twins' own entries
    are taken back out of the last two)."""
    n = len(a)
    left = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)
    right = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)).to(device)
    same = torch.empty(n, dtype=torch.float32, device=device)
    rank = torch.empty(n, dtype=torch.int64, device=device)
    histogram = torch.zeros(BINS, dtype=torch.int64, device=device)
    total, total_squares = 0.0, 0.0
    for start in range(0, n, chunk):
        similarity = left[start:start + chunk] @ right.T  # (rows, n): cos, distance = 1 - cos
        twin = similarity.diagonal(offset=start).clone()
        same[start:start + chunk] = 1.0 - twin
        rank[start:start + chunk] = (similarity > twin[:, None]).sum(1) + 1
        histogram += torch.bincount(_bin(1.0 - similarity).flatten(), minlength=BINS)
        histogram -= torch.bincount(_bin(1.0 - twin), minlength=BINS)
        flat = similarity.view(-1)
        total += float(flat.sum()) - float(twin.sum())
        total_squares += float(torch.dot(flat, flat)) - float(torch.dot(twin, twin))
    return PairScan(same.cpu().numpy(), rank.cpu().numpy(), histogram.cpu().numpy(), total, total_squares,
                    n * (n - 1))


def _bin(distance: torch.Tensor) -> torch.Tensor:
    return distance.mul_(BINS / 2).to(torch.int32).clamp_(0, BINS - 1)


def positive_components(scan: PairScan) -> np.ndarray:
    """For each ID, the share of different-ID distances above its same-ID distance (ties in a bin count half):
    their mean is the ROC-AUC."""
    histogram = scan.negative_histogram.astype(np.float64)
    above = (histogram.sum() - np.cumsum(histogram)) / histogram.sum()  # share in bins after bin k
    bins = _bin(torch.from_numpy(scan.same.copy())).numpy()
    return above[bins] + 0.5 * histogram[bins] / histogram.sum()


def pair_measures(scan: PairScan, ids: Optional[np.ndarray] = None) -> dict[str, float]:
    """The measures of one pair, over all IDs or over the resampled `ids` (indices, repeats allowed)."""
    ids = np.arange(len(scan.same)) if ids is None else ids
    same, rank = scan.same[ids], scan.rank[ids]
    negative_mean, negative_var = scan.negative_mean, scan.negative_var
    measures = {"auc": float(positive_components(scan)[ids].mean())}
    measures |= {f"recall@{k}": float((rank <= k).mean()) for k in RECALL_AT}
    measures |= {
        "median_rank": float(np.median(rank)),
        "d_prime": float((negative_mean - same.mean()) / np.sqrt((same.var() + negative_var) / 2)),
        "same_id_median": float(np.median(same)),
        "different_id_mean": float(negative_mean),
    }
    return measures


def bootstrap(scan: PairScan, resamples: int = 1000, seed: int = 0) -> dict[str, tuple[float, float]]:
    """95% intervals of each measure, resampling IDs with replacement."""
    rng = np.random.default_rng(seed)
    n = len(scan.same)
    draws = [pair_measures(scan, rng.integers(0, n, n)) for _ in range(resamples)]
    return {key: (float(np.percentile([d[key] for d in draws], 2.5)), float(np.percentile([d[key] for d in draws], 97.5)))
            for key in draws[0]}


def groups(embeddings: dict[str, tuple[list[str], np.ndarray]], seed: int = 0) -> dict[str, np.ndarray]:
    """Upstream's 8 groups of distances (see the module docstring), for the sources given."""
    result = {}
    for source, (ids, vectors) in embeddings.items():
        result[f"{source.capitalize()} vs {source.capitalize()}"] = cosine_distance(
            vectors, vectors[derangement(len(ids), seed)])
    if "nat" in embeddings:
        diff = []
        for source in embeddings:
            if source == "nat":
                continue
            common, nat, other = align(*embeddings["nat"], *embeddings[source])
            result[f"Nat vs {source.capitalize()}"] = cosine_distance(nat, other)
            diff.append(cosine_distance(nat, other[derangement(len(common), seed)]))
        if diff:
            result["Diff Source & ID"] = np.concatenate(diff)
    return {name: result[name] for name in sorted(result, key=_group_position)}


def _group_position(name: str) -> tuple[int, str]:
    return (GROUP_ORDER.index(name) if name in GROUP_ORDER else len(GROUP_ORDER), name)


def source_pairs(sources: list[str]) -> list[tuple[str, str]]:
    return list(itertools.combinations(sources, 2))


def clip_distance_report(embeddings: dict[str, tuple[list[str], np.ndarray]], out: Path, *, resamples: int = 1000,
                         seed: int = 0, device: str = "cpu") -> dict:
    """Write clip_distance.png (the box plot), clip_distance.json and clip_distance.csv into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    distances = groups(embeddings, seed)
    report = {"pairing": __doc__.split("Per source pair")[0].strip(), "groups": {}, "pairs": {}}
    for name, values in distances.items():
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        report["groups"][name] = {"n": int(len(values)), "q1": float(q1), "median": float(median), "q3": float(q3),
                                  "mean": float(values.mean())}
    for a, b in source_pairs(list(embeddings)):
        common, left, right = align(*embeddings[a], *embeddings[b])
        scan = scan_pair(left, right, device=device)
        report["pairs"][f"{a}-{b}"] = {"n": len(common), **pair_measures(scan),
                                       "ci95": bootstrap(scan, resamples, seed)}
    (out / "clip_distance.json").write_text(json.dumps(report, indent=2))
    _write_csv(report, out / "clip_distance.csv")
    plot_groups(distances, out / "clip_distance.png")
    return report


def _write_csv(report: dict, path: Path) -> None:
    keys = [key for key in next(iter(report["pairs"].values())) if key not in ("ci95",)] if report["pairs"] else []
    lines = ["pair," + ",".join(keys + [f"{key}_ci_low,{key}_ci_high" for key in keys if key != "n"])]
    for pair, values in report["pairs"].items():
        cells = [str(values[key]) for key in keys]
        cells += [f"{values['ci95'][key][0]},{values['ci95'][key][1]}" for key in keys if key != "n"]
        lines.append(pair + "," + ",".join(cells))
    path.write_text("\n".join(lines) + "\n")


def plot_groups(distances: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(16, 6.5))
    colors = plt.get_cmap("Set2").colors
    boxes = axes.boxplot(list(distances.values()), patch_artist=True, widths=0.8,
                         medianprops={"color": "#333333"}, flierprops={"marker": "o", "markerfacecolor": "none",
                                                                         "markeredgecolor": "#555555", "markersize": 5})
    for box, color in zip(boxes["boxes"], itertools.cycle(colors)):
        box.set_facecolor(color)
    axes.set_xticks(range(1, len(distances) + 1), list(distances), rotation=45)
    axes.set_title(f"Cosine Distance Comparison (All {len(distances)} Types)", fontsize=15)
    axes.set_xlabel("type")
    axes.set_ylabel("distance")
    axes.grid(True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
