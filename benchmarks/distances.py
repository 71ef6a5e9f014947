"""CLIP-distance statistics at full size: 4 sources x 52,001 IDs x 512-d random embeddings.

    python benchmarks/distances.py [--n 52001] [--dim 512] [--device cpu] [--resamples 1000]

Times every measure of `builder stats clip-distance` (the 8 groups and, for each of the 6 source pairs, all N x N
distances with ranks, the AUC histogram, moments and bootstrap intervals) against the floor of the same FLOPs: one
plain chunked matrix product per pair, results discarded. Also times a pair-by-pair Python loop on a sample and
extrapolates it, and reports peak memory (RSS) of the process.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import numpy as np  # noqa: E402
import torch  # noqa: E402

import synmirror  # noqa: E402
from builder.distances import bootstrap, groups, pair_measures, scan_pair, source_pairs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=52_001)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--loop-sample", type=int, default=20_000, help="pairs timed in the pair-by-pair loop")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    ids = [synmirror.format_id(i) for i in range(args.n)]
    embeddings = {}
    for source in synmirror.SOURCES:
        vectors = rng.standard_normal((args.n, args.dim), dtype=np.float32)
        embeddings[source] = (ids, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    pairs = source_pairs(list(embeddings))

    started = time.perf_counter()
    groups(embeddings)
    scans = {}
    for a, b in pairs:
        scans[a, b] = scan_pair(embeddings[a][1], embeddings[b][1], device=args.device)
    scanned = time.perf_counter() - started
    for scan in scans.values():
        pair_measures(scan)
        bootstrap(scan, args.resamples)
    ours = time.perf_counter() - started

    started = time.perf_counter()
    for a, b in pairs:  # the floor: the same products, nothing else
        left = torch.from_numpy(embeddings[a][1]).to(args.device)
        right = torch.from_numpy(embeddings[b][1]).to(args.device)
        for start in range(0, args.n, 512):
            left[start:start + 512] @ right.T
    floor = time.perf_counter() - started

    a, b = embeddings["nat"][1], embeddings["sd"][1]
    sample = rng.integers(0, args.n, (args.loop_sample, 2))
    started = time.perf_counter()
    for i, j in sample:
        1.0 - float(np.dot(a[i], b[j]))
    per_pair = (time.perf_counter() - started) / args.loop_sample
    looped = per_pair * args.n * args.n * len(pairs)

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    flops = 2 * args.n * args.n * args.dim * len(pairs)
    print(f"\n4 sources x {args.n} x {args.dim}, {len(pairs)} pairs ({flops / 1e12:.1f} TFLOP), {args.device}, "
          f"{torch.get_num_threads()} threads, {args.resamples} bootstrap resamples\n")
    print("| measure | time | against | ratio |\n|---|---|---|---|")
    print(f"| all statistics, 6 pairs | {ours:.1f} s (scans {scanned:.1f} s) | plain products {floor:.1f} s | "
          f"{ours / floor:.2f}x |")
    print(f"| pair-by-pair loop (extrapolated from {args.loop_sample} pairs) | {looped / 3600:.1f} h | ours "
          f"{ours:.1f} s | ours {looped / ours:.0f}x faster |")
    print(f"| peak RSS | {rss:.0f} MB | embeddings {4 * args.n * args.dim * 4 / 1e6:.0f} MB | |")


if __name__ == "__main__":
    main()
