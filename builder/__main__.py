"""python -m builder {generate,export,stats} ... (see --help of each)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

import synmirror

from .card import FIGURES, render_body
from .generate import CHUNK, export_workdir, generate, run_facts, timed, write_manifest, written_ids
from .generators import GENERATORS, GeneratorError


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m builder", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_generate_command(commands, argv)
    export = commands.add_parser("export", help="write a work folder's sources as configs of an export folder")
    export.add_argument("workdir", type=Path)
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--overwrite", action="store_true", help="rewrite configs already in --out")
    export.add_argument("--repo", default="<namespace>/synmirror", help="the Hub id the card's examples load")
    export.add_argument("--figures", type=Path, default=FIGURES, help="figures to show on the card")
    add_stats_command(commands)
    args = parser.parse_args(argv)
    try:
        return {"generate": run_generate, "stats": run_stats, "export": run_export}[args.command](args)
    except (synmirror.SynMirrorError, GeneratorError) as error:
        print(f"builder: error: {error}", file=sys.stderr)
        return 2


def run_export(args) -> int:
    summary = export_workdir(args.workdir, args.out, overwrite=args.overwrite,
                             card_body=lambda out: render_body(out, args.repo, args.figures))
    print(summary.table())
    return 0


def add_generate_command(commands, argv: list[str]) -> None:
    generate = commands.add_parser(
        "generate", help="render captions with a generator into a work folder (resumable, many GPUs)",
        description="Render captions into WORKDIR/<source>/. Run with `python -m builder` on one device, or with "
        "`accelerate launch -m builder generate ...` on several; rerun to resume. The settings below are those "
        "of --source's generator (upstream's defaults).",
    )
    generate.add_argument("--source", required=True, choices=list(GENERATORS))
    generate.add_argument("--out", type=Path, required=True, metavar="WORKDIR")
    generate.add_argument("--ids", help="IDs: a range 0-999, a list 1,5,9, or a file of IDs (default: all)")
    generate.add_argument("--limit", type=int, help="only the first N of those IDs")
    generate.add_argument("--captions", type=Path, help="the captions JSON (default: --data-dir, else upstream)")
    generate.add_argument("--data-dir", help="a folder holding caption.json (as for `synmirror download`)")
    generate.add_argument("--seed", type=int, default=0, help="the base seed (see builder.generate.seed_for)")
    generate.add_argument("--chunk-size", type=int, default=CHUNK, help="IDs per chunk, the unit of work and resume")
    source = _peek(argv, "--source")  # its generator's settings become flags
    if source in GENERATORS:
        add_settings_arguments(generate, GENERATORS[source].defaults)


def _peek(argv: list[str], flag: str) -> Optional[str]:
    for index, token in enumerate(argv):
        if token == flag and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    return None


def add_settings_arguments(parser: argparse.ArgumentParser, defaults) -> None:
    group = parser.add_argument_group("generator settings")
    for field in dataclasses.fields(defaults):
        value = getattr(defaults, field.name)
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            group.add_argument(flag, type=type(value) if value is not None else str, default=value,
                               help=f"default: {value}")


def parse_ids(value: Optional[str], captions: dict[str, str]) -> list[str]:
    if value is None:
        return list(captions)
    tokens = Path(value).read_text().split() if Path(value).is_file() else value.split(",")
    ids = []
    for token in filter(None, (token.strip() for token in tokens)):
        first, _, last = token.partition("-")
        ids += [synmirror.format_id(i) for i in range(int(first), int(last or first) + 1)]
    unknown = [id_ for id_ in ids if id_ not in captions]
    if unknown:
        raise synmirror.SynMirrorError(f"{len(unknown)} requested IDs have no caption, e.g. {unknown[:5]}")
    return ids


def load_captions(args) -> dict[str, str]:
    if args.captions:
        return synmirror.read_captions(str(args.captions))
    import datasets

    config = synmirror.SynMirrorConfig(name=synmirror.CAPTIONS_CONFIG, data_dir=args.data_dir)
    files = synmirror.fetch_files(config, datasets.DownloadManager(dataset_name="synmirror"), [])
    return synmirror.read_captions(files.captions)


def keep_captions(workdir: Path, captions: dict[str, str]) -> None:
    """Record the captions in the work folder; a work folder holds the images of one set of captions."""
    path = workdir / "captions.json"
    if path.is_file() and synmirror.read_captions(str(path)) != captions:
        raise synmirror.SynMirrorError(f"{path} holds other captions than these; use another work folder")
    workdir.mkdir(parents=True, exist_ok=True)
    synmirror.write_atomically(path, json.dumps(captions, ensure_ascii=False).encode())


def accelerate_state() -> PartialState:
    """This process's place in an `accelerate launch` (or a world of one). On machines without a GPU, processes
    started by `accelerate launch --multi_gpu` (torchrun) meet over gloo."""
    return PartialState(cpu=not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU"))


def run_generate(args) -> int:
    spec = GENERATORS[args.source]
    settings = dataclasses.replace(spec.defaults, **{
        field.name: getattr(args, field.name) for field in dataclasses.fields(spec.defaults)
    })
    state = accelerate_state()
    captions = load_captions(args)
    ids = parse_ids(args.ids, captions)[: args.limit]
    if state.is_main_process:
        keep_captions(args.out, captions)
    generator = spec.build(settings, state.device)
    facts = run_facts(args.source, settings, state.device, state.process_index, state.num_processes, args.seed)
    folder = args.out / args.source
    folder.mkdir(parents=True, exist_ok=True)
    write_manifest(folder, facts)
    started = time.perf_counter()
    written = generate(generator, args.source, captions, ids, args.out, base_seed=args.seed,
                       rank=state.process_index, world=state.num_processes, chunk_size=args.chunk_size)
    write_manifest(folder, timed(facts, written, started))
    state.wait_for_everyone()
    if state.is_main_process:
        held = written_ids(folder) & set(ids)
        print(f"{args.source}: {len(held)} of {len(ids)} requested IDs are in {folder}")
    return 0




def add_stats_command(commands) -> None:
    from .demographics import DEFAULT_AGE_MODEL, DEFAULT_GENDER_MODEL
    from .embed import DEFAULT_CLIP

    stats = commands.add_parser("stats", help="measure sources: CLIP distances, demographics, a sample grid")
    which = stats.add_subparsers(dest="stat", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dataset", default="synmirror", help="an export folder or Hub id (default: ./synmirror)")
    common.add_argument("--figures", type=Path, default=FIGURES, help=f"where figures go (default: {FIGURES})")
    sources = argparse.ArgumentParser(add_help=False)
    sources.add_argument("--configs", default=",".join(synmirror.SOURCES), help="source configs, comma-separated")
    cache = argparse.ArgumentParser(add_help=False)
    cache.add_argument("--cache", type=Path, default=Path("embeddings"), help="the embeddings cache (./embeddings)")

    embed = which.add_parser("embed", parents=[common, sources, cache], help="CLIP image embeddings, cached")
    embed.add_argument("--model", default=DEFAULT_CLIP)
    embed.add_argument("--batch-size", type=int, default=64)
    distance = which.add_parser("clip-distance", parents=[common, sources, cache],
                                help="upstream's 8-group box plot, with ROC-AUC, recall@k, d' and bootstrap intervals")
    distance.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    distance.add_argument("--seed", type=int, default=0)
    distance.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    people = which.add_parser("demographics", parents=[common, sources], help="age and gender per source")
    people.add_argument("--age-model", default=DEFAULT_AGE_MODEL)
    people.add_argument("--gender-model", default=DEFAULT_GENDER_MODEL)
    people.add_argument("--labels", type=Path, help="a precomputed labels CSV (config,id,age,gender) instead")
    people.add_argument("--batch-size", type=int, default=32)
    grid = which.add_parser("grid", parents=[common], help="a sample grid: one row per ID, one column per source")
    grid.add_argument("--ids", help="comma-separated IDs (default: --count drawn at random)")
    grid.add_argument("--count", type=int, default=4)
    grid.add_argument("--seed", type=int, default=0)


def run_stats(args) -> int:
    configs = args.configs.split(",") if hasattr(args, "configs") else []
    if args.stat == "embed":
        from .embed import ClipEmbedder, embed_config

        state = accelerate_state()
        embedder = ClipEmbedder(args.model, state.device, args.batch_size)
        for config in configs:
            embed_config(embedder, args.dataset, config, args.cache, rank=state.process_index,
                         world=state.num_processes)
        state.wait_for_everyone()
    elif args.stat == "clip-distance":
        from .distances import clip_distance_report
        from .embed import load_embeddings

        embeddings = {config: load_embeddings(args.cache, config) for config in configs}
        report = clip_distance_report(embeddings, args.figures, resamples=args.resamples, seed=args.seed,
                                      device=args.device)
        print(json.dumps({pair: {k: v for k, v in values.items() if k != "ci95"}
                          for pair, values in report["pairs"].items()}, indent=2))
    elif args.stat == "demographics":
        from .demographics import classify, estimator_note, read_labels, report

        if args.labels:
            rows = [row for row in read_labels(args.labels) if row["config"] in configs]
            note = f"Labels from {args.labels.name}, not upstream's DeepFace unless that file says so."
        else:
            rows = list(classify(args.dataset, configs, args.age_model, args.gender_model,
                                 batch_size=args.batch_size))
            note = estimator_note(args.age_model, args.gender_model)
        print(json.dumps(report(rows, args.figures, note)["sources"], indent=2))
    else:
        from .grid import sample_grid

        ids = [synmirror.format_id(int(i)) for i in args.ids.split(",")] if args.ids else None
        print(sample_grid(args.dataset, args.figures / "sample.png", ids=ids, count=args.count, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
