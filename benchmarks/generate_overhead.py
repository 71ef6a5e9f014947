"""Orchestration overhead of `builder generate` on a tiny model, against a bare loop of pipeline calls.

    python benchmarks/generate_overhead.py [--images 96] [--batch-size 4] [--size 64] [--steps 4]

Both sides run the same pipeline object on the same prompts, seeds and batch size; ours adds seeding, PNG encoding
(in a background thread), Parquet shards and chunk renames. A tiny model makes each pipeline call short, so this
is the worst case for the overhead ratio. Best of --repeats runs each.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

import synmirror  # noqa: E402
from builder.generate import batched, generate, seed_for  # noqa: E402
from builder.generators import DiffusersGenerator, DiffusersSettings  # noqa: E402
from tiny_models import build_tiny_sd  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core for the model leaves the other to our encoding thread, as a GPU would
    work = Path(tempfile.mkdtemp())
    settings = DiffusersSettings(pipeline="StableDiffusionPipeline", model=str(build_tiny_sd(work / "model")),
                                 steps=args.steps, width=args.size, height=args.size, batch_size=args.batch_size)
    generator = DiffusersGenerator.load(settings, torch.device("cpu"))
    ids = [synmirror.format_id(i) for i in range(args.images)]
    captions = {id_: f"a photo of person {int(id_)} smiling" for id_ in ids}

    def bare() -> float:
        started = time.perf_counter()
        for batch in batched(ids, args.batch_size):
            generator([captions[i] for i in batch], [seed_for("sd", i) for i in batch])
        return time.perf_counter() - started

    def ours() -> float:
        shutil.rmtree(work / "out", ignore_errors=True)
        started = time.perf_counter()
        generate(generator, "sd", captions, ids, work / "out")
        return time.perf_counter() - started

    bare(), ours()  # warm up both
    floor = min(bare() for _ in range(args.repeats))
    measured = min(ours() for _ in range(args.repeats))
    shutil.rmtree(work)
    print(f"\n{args.images} images of {args.size}px, {args.steps} steps, batch {args.batch_size}, tiny SD on the CPU\n")
    print("| measure | ours | bare pipeline loop | overhead |\n|---|---|---|---|")
    print(f"| generate | {measured:.2f} s ({args.images / measured:.1f} img/s) | {floor:.2f} s "
          f"({args.images / floor:.1f} img/s) | {100 * (measured / floor - 1):+.1f}% |")


if __name__ == "__main__":
    main()
