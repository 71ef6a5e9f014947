"""SynMirror: natural face photos and their synthetic mirrors, paired by ID.

52,001 natural face photos (FFHQ) were captioned with Salesforce BLIP; each caption was then rendered by Stable
Diffusion 2.1, SDXL base 1.0 and Infinity. Every image that shares an ID came from the same caption.

This one file is the users' side of the project: the sources, the `datasets` builder, downloading, reading the
upstream archives, the join by ID, the Parquet export that `load_dataset` reads, and the `synmirror` command.
It imports nothing else from the repository, so it is also a loading script for `datasets` < 4.

Where each file comes from, in this order:
  1. `data_dir` (manual downloads): `<source>.zip`, `.tar`, `.tar.gz`, `.tgz` or a folder `<source>/`, and
     `caption.json` (or upstream's spelling `captioin.json`);
  2. the config's `urls` overrides, `{"nat": url, ..., "captions": url}` (mirrors, tests);
  3. upstream: the Google Drive files through gdown, the captions at a pinned commit of the upstream repository.

The ID rule: an image's ID is the leading run of digits of its file name's stem, written with 5 digits. The digits
may be followed by `_`, `-` or `.` and anything: `00123.png`, `123.jpg`, `nat/00000/00123_sdxl.webp` are all ID
`00123`. Images are `.png`, `.jpg`, `.jpeg`, `.webp` (any case); anything under a dot-folder or `__MACOSX/`,
dot-files and other extensions are skipped; an image whose name has no ID is skipped with a warning. Caption keys
follow the same rule (`"123"` and `"00123"` are the same ID).

What the configs hold when captions and images disagree: a source config has one row per image, with a null
`caption` when the captions have no entry for its ID; `captions` has one row per caption; `paired` has one row per
ID found in any of them, with null where a source has no image. Both kinds of mismatch are reported with counts
and examples.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import io
import json
import os
import re
import shutil
import stat
import sys
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, Optional

import datasets
from PIL import Image

logger = datasets.logging.get_logger(__name__)

_HOMEPAGE = "https://github.com/dshinek/SynMirror"
_LICENSE = "MIT (upstream repository); the natural images come from FFHQ (CC BY-NC-SA 4.0)"
_CITATION = ""
_DESCRIPTION = """\
SynMirror pairs 52,001 natural face photos (FFHQ) with synthetic images generated from their BLIP captions by
Stable Diffusion 2.1, SDXL base 1.0 and Infinity. Every image that shares an ID came from the same caption, so
content is held fixed while the generator changes: a testbed for how synthetic images differ from natural ones.
"""


# ---------------------------------------------------------------------------------------------------------------
# Facts: the sources, the captions file, the ID rule, the schema. Everything else reads them from here.
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Source:
    """One set of images, joined by ID with the captions."""

    name: str
    title: str
    drive_id: Optional[str]  # the upstream Google Drive file
    model: Optional[str]  # the model that generated it; None for natural images

    @property
    def drive_url(self) -> str:
        return f"https://drive.google.com/file/d/{self.drive_id}/view"


SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        Source("nat", "natural photos (FFHQ)", "1gkU8dC_QorA5mm93tWY7_3D1uF_UTxM0", None),
        Source("sd", "Stable Diffusion 2.1", "1gmzTpmm7nRZQntztm9K3A-wfkQvD80X_", "stabilityai/stable-diffusion-2-1"),
        Source(
            "sdxl", "SDXL base 1.0", "1ls9e1P0gj5BgeL9ZEyIfA_JyRdtwE6qh", "stabilityai/stable-diffusion-xl-base-1.0"
        ),
        Source("infinity", "Infinity", "1N5wsna92xcLcWpAHVoYbVN-W3LDghwna", "FoundationVision/Infinity"),
    )
}


@dataclasses.dataclass(frozen=True)
class PinnedFile:
    url: str
    size: int
    sha256: str


CAPTIONS = PinnedFile(
    url="https://raw.githubusercontent.com/dshinek/SynMirror/61e6ba0cde62278a5bf20ba1fb57876ff03841a7/captioin.json",
    size=2_877_030,
    sha256="820770e72d8c6f5fd381ffdea3fe4f8ab60e9b20e1bda91c2fd14481a7860846",
)
CAPTIONS_NAMES = ("caption.json", "captioin.json")  # upstream's README says the first, its repo ships the second
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "WEBP")  # what PIL calls them; MPO is a JPEG with extra frames

ID_DIGITS = 5
_ID_STEM = re.compile(r"(\d+)(?:[._-].*)?", re.DOTALL)


def format_id(number: int) -> str:
    return f"{number:0{ID_DIGITS}d}"


def id_from_name(name: str) -> Optional[str]:
    """The ID of an image file (see the module docstring), or None if its name carries none."""
    stem = PurePosixPath(name).name.rsplit(".", 1)[0]
    match = _ID_STEM.fullmatch(stem)
    if match is None or len(match[1].lstrip("0")) > ID_DIGITS:
        return None
    return format_id(int(match[1]))


def id_from_key(key: str) -> Optional[str]:
    """The ID of a caption key: digits only."""
    return format_id(int(key)) if re.fullmatch(r"\d{1,%d}" % ID_DIGITS, key) else None


# Provenance of each image; null where upstream did not record it. width/height are read from the image itself.
PROVENANCE = datasets.Features(
    {
        "model": datasets.Value("string"),
        "revision": datasets.Value("string"),
        "seed": datasets.Value("int64"),
        "steps": datasets.Value("int32"),
        "guidance": datasets.Value("float32"),
        "scheduler": datasets.Value("string"),
        "width": datasets.Value("int32"),
        "height": datasets.Value("int32"),
    }
)
CAPTIONS_CONFIG = "captions"
PAIRED_CONFIG = "paired"
CONFIG_NAMES = (*SOURCES, CAPTIONS_CONFIG, PAIRED_CONFIG)
DEFAULT_CONFIG = PAIRED_CONFIG  # the viewer's first page then shows each caption with its four images


def config_features(name: str) -> datasets.Features:
    keyed = {"id": datasets.Value("string"), "caption": datasets.Value("string")}
    if name == CAPTIONS_CONFIG:
        return datasets.Features(keyed)
    if name == PAIRED_CONFIG:
        return datasets.Features({**keyed, **{source: datasets.Image() for source in SOURCES}})
    return datasets.Features({**keyed, "image": datasets.Image(), "source": datasets.Value("string"), **PROVENANCE})


def config_sources(name: str) -> list[str]:
    """The image sources a config reads."""
    if name not in CONFIG_NAMES:
        raise SynMirrorError(f"unknown config {name!r}; choose from {', '.join(CONFIG_NAMES)}")
    if name == PAIRED_CONFIG:
        return list(SOURCES)
    return [] if name == CAPTIONS_CONFIG else [name]


class SynMirrorError(Exception):
    """Bad or missing input. The message names the file and the ID, and says what to do."""


def manual_download_help() -> str:
    """How to do without the network: every upstream file, and where to put it."""
    files = [f"  caption.json   {CAPTIONS.url}"]
    files += [f"  {s.name + '.zip':<14} {s.drive_url}  ({s.title})" for s in SOURCES.values()]
    return (
        "To download by hand, save these into one folder (an archive may also be .tar/.tar.gz, or unpacked into a "
        "folder named after its source):\n" + "\n".join(files) + "\nthen pass that folder as the data_dir: "
        "`synmirror download --data-dir DIR`, or `SynMirror(config_name=..., data_dir=DIR)`."
    )


# ---------------------------------------------------------------------------------------------------------------
# Fetching: data_dir, then URL overrides, then upstream.
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Files:
    """Local paths of what a config reads."""

    captions: str
    images: dict[str, str]  # source name -> archive or folder
    work_dir: str  # where tar archives are unpacked


def fetch_files(config: "SynMirrorConfig", dl_manager, sources: Iterable[str]) -> Files:
    urls = dict(config.urls or {})
    unknown = set(urls) - {*SOURCES, "captions"}
    if unknown:
        raise SynMirrorError(f"urls has unknown keys {sorted(unknown)}; use source names or 'captions'")
    data_dir = os.path.abspath(os.path.expanduser(config.data_dir)) if config.data_dir else None
    if data_dir and not os.path.isdir(data_dir):
        raise SynMirrorError(f"data_dir {data_dir} is not a folder")
    download_root = dl_manager.download_config.cache_dir or str(datasets.config.DOWNLOADED_DATASETS_PATH)
    captions = find_in_data_dir(data_dir, "captions") or download(
        "captions", urls.get("captions"), dl_manager, download_root, sha256=config.captions_sha256
    )
    images = {
        name: find_in_data_dir(data_dir, name) or download(name, urls.get(name), dl_manager, download_root)
        for name in sources
    }
    return Files(captions, images, os.path.join(download_root, "synmirror-extracted"))


def find_in_data_dir(data_dir: Optional[str], what: str) -> Optional[str]:
    if data_dir is None:
        return None
    names = CAPTIONS_NAMES if what == "captions" else [what + suffix for suffix in ("", *ARCHIVE_SUFFIXES)]
    found = [os.path.join(data_dir, name) for name in names if os.path.exists(os.path.join(data_dir, name))]
    if what == "captions" or len(found) < 2:
        return found[0] if found else None
    raise SynMirrorError(f"{data_dir} holds several copies of {what}: {', '.join(found)}. Keep one.")


def download(what: str, url: Optional[str], dl_manager, download_root: str, sha256: Optional[str] = None) -> str:
    if dl_manager.is_streaming:
        raise SynMirrorError(
            f"streaming reads {what} from data_dir only (here it would have to be downloaded). "
            "Put the files in data_dir, or run `synmirror download` and stream the Parquet it writes."
        )
    if url is None and what == "captions":
        url, sha256 = CAPTIONS.url, CAPTIONS.sha256
    if url is None:
        return download_from_drive(SOURCES[what], download_root)
    try:
        path = dl_manager.download(url)
    except (OSError, ConnectionError, RuntimeError) as error:
        raise SynMirrorError(
            f"could not download {what} from {url} ({type(error).__name__}: {error}).\n{manual_download_help()}"
        ) from error
    if sha256 is not None:
        check_sha256(path, sha256, f"{what} from {url}")
    return path


def download_from_drive(source: Source, download_root: str) -> str:
    import gdown  # only this path needs it

    output = os.path.join(download_root, "synmirror", f"{source.name}-{source.drive_id}")
    if os.path.exists(output):  # gdown publishes a file only once it is whole
        return output
    os.makedirs(os.path.dirname(output), exist_ok=True)
    try:
        gdown.download(
            id=source.drive_id, output=output, quiet=False, resume=True, use_cookies=False, timeout=(10, 60), retries=3
        )
    except gdown.exceptions.FileURLRetrievalError as error:
        raise SynMirrorError(
            f"Google Drive refused to serve {source.name} ({source.title}): {error}\n"
            "Drive does this when a shared file's download quota is used up or it needs permission.\n"
            + manual_download_help()
        ) from error
    except Exception as error:  # requests' and gdown's network errors share no base class
        raise SynMirrorError(
            f"could not download {source.name} ({source.title}) from Google Drive ({type(error).__name__}: "
            f"{error}).\n" + manual_download_help()
        ) from error
    if _sniff(output) == "html":
        os.remove(output)
        raise SynMirrorError(
            f"Google Drive sent a web page instead of the {source.name} archive (quota or permission page); "
            f"it was deleted.\n{manual_download_help()}"
        )
    return output


def check_sha256(path: str, expected: str, what: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        os.remove(path)
        raise SynMirrorError(
            f"{what} fails its checksum: sha256 {digest.hexdigest()}, expected {expected}. The damaged copy "
            f"{path} was deleted; run again to download it anew.\n{manual_download_help()}"
        )


# ---------------------------------------------------------------------------------------------------------------
# Reading: the captions file, and the images of an archive or folder, sorted by ID.
# ---------------------------------------------------------------------------------------------------------------


def read_captions(path: str) -> dict[str, str]:
    """The captions file as {ID: caption}, sorted by ID."""
    expected = 'one JSON object {"00000": "a caption", ...}'
    try:
        with open(path, "rb") as file:
            data = json.load(file)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SynMirrorError(f"{path} is not JSON ({error}); expected {expected}. Replace the file.") from error
    if not isinstance(data, dict):
        raise SynMirrorError(f"{path} holds a JSON {type(data).__name__}; expected {expected}. Replace the file.")
    captions: dict[str, str] = {}
    for key, caption in data.items():
        id_ = id_from_key(key)
        if id_ is None:
            raise SynMirrorError(f"{path}: key {key!r} is not an ID (1 to {ID_DIGITS} digits); expected {expected}")
        if not isinstance(caption, str):
            raise SynMirrorError(f"{path}: the caption of ID {id_} is a {type(caption).__name__}, not a string")
        if id_ in captions:
            raise SynMirrorError(f"{path}: ID {id_} appears twice (keys are read as 5-digit IDs)")
        captions[id_] = caption
    return dict(sorted(captions.items()))


@dataclasses.dataclass(frozen=True)
class ImageFile:
    id: str
    name: str  # the path inside the archive or folder
    read: Callable[[], bytes]


def read_images(path: str, work_dir: str) -> list[ImageFile]:
    """The images of an archive or folder, sorted by ID; their bytes are read on demand."""
    kind = "folder" if os.path.isdir(path) else _sniff(path)
    if kind == "zip":
        entries = _zip_entries(path)
    elif kind == "tar":
        entries = _folder_entries(extract_tar(path, work_dir))
    elif kind == "folder":
        entries = _folder_entries(path)
    elif kind == "html":
        raise SynMirrorError(
            f"{path} is a web page, not an archive: Google Drive sends one when a file's quota is used up or it "
            "needs permission. Delete it and download the archive by hand into data_dir."
        )
    else:
        raise SynMirrorError(
            f"{path} is not a zip or tar archive (an interrupted download looks like this). Delete it and "
            "download it again."
        )
    images = _index(path, entries)
    if not images:
        raise SynMirrorError(
            f"{path} holds no images named by ID (such as 00123.png; {', '.join(IMAGE_SUFFIXES)}). "
            "Is it the right file?"
        )
    return images


def _sniff(path: str) -> str:
    with open(path, "rb") as file:
        head = file.read(512)
    if head.startswith(b"PK"):
        return "zip"
    if head.startswith(b"\x1f\x8b") or head[257:262] == b"ustar":
        return "tar"
    if head.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
        return "html"
    return "unknown"


def _entry_problem(name: str) -> Optional[str]:
    """Why an archive entry could land outside the folder it is unpacked into, if it could."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "has an absolute path"
    if ".." in parts:
        return "climbs out of the archive with '..'"
    return None


def _unsafe_entry(archive: str, name: str, problem: str) -> SynMirrorError:
    return SynMirrorError(
        f"{archive}: entry {name!r} {problem}; it was not unpacked. The archive is damaged or not what it claims "
        "to be: download it again from its source."
    )


def _is_candidate(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if any(part.startswith(".") or part == "__MACOSX" for part in parts):
        return False
    return name.lower().endswith(IMAGE_SUFFIXES)


def _zip_entries(path: str) -> Iterator[tuple[str, Callable[[], bytes]]]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise SynMirrorError(
            f"{path} is a damaged or truncated zip ({error}). Delete it and download it again."
        ) from error
    for info in archive.infolist():
        problem = _entry_problem(info.filename)
        if problem is None and stat.S_ISLNK(info.external_attr >> 16):
            problem = "is a symbolic link"
        if problem:
            raise _unsafe_entry(path, info.filename, problem)
        if not info.is_dir():
            yield info.filename, functools.partial(archive.read, info)


def extract_tar(path: str, work_dir: str) -> str:
    """Unpack the images of a tar archive into a folder of `work_dir`, once: the folder appears only when whole."""
    status = os.stat(path)
    key = hashlib.sha1(f"{os.path.abspath(path)}:{status.st_size}:{status.st_mtime_ns}".encode()).hexdigest()[:16]
    target = os.path.join(work_dir, f"{os.path.basename(path)}-{key}")
    if os.path.isdir(target):
        return target
    partial = f"{target}.incomplete"
    shutil.rmtree(partial, ignore_errors=True)  # what a killed run left
    try:
        with tarfile.open(path, "r|*") as archive:  # one sequential pass, compressed or not
            for member in archive:
                problem = _entry_problem(member.name)
                if problem is None and (member.issym() or member.islnk()):
                    problem = f"is a link to {member.linkname!r}"
                if problem:
                    raise _unsafe_entry(path, member.name, problem)
                if member.isfile() and _is_candidate(member.name):
                    destination = os.path.join(partial, *PurePosixPath(member.name).parts)
                    os.makedirs(os.path.dirname(destination), exist_ok=True)
                    with archive.extractfile(member) as source, open(destination, "wb") as out:
                        shutil.copyfileobj(source, out, 1 << 20)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        shutil.rmtree(partial, ignore_errors=True)
        raise SynMirrorError(
            f"{path} is a damaged or truncated archive ({error}). Delete it and download it again."
        ) from error
    except SynMirrorError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    os.makedirs(partial, exist_ok=True)  # an archive of no images still gets its (empty) folder
    os.replace(partial, target)
    return target


def _read_file(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _folder_entries(root: str) -> Iterator[tuple[str, Callable[[], bytes]]]:
    for folder, subfolders, names in os.walk(root):
        subfolders.sort()
        for name in sorted(names):
            full = os.path.join(folder, name)
            yield os.path.relpath(full, root).replace(os.sep, "/"), functools.partial(_read_file, full)


def _index(archive: str, entries: Iterable[tuple[str, Callable[[], bytes]]]) -> list[ImageFile]:
    by_id: dict[str, ImageFile] = {}
    unnamed = []
    for name, read in entries:
        if not _is_candidate(name):
            continue
        id_ = id_from_name(name)
        if id_ is None:
            unnamed.append(name)
        elif id_ in by_id:
            raise SynMirrorError(
                f"{archive}: two images for ID {id_}: {by_id[id_].name!r} and {name!r}. Each ID must appear once "
                "per source: remove one and run again."
            )
        else:
            by_id[id_] = ImageFile(id_, name, read)
    if unnamed:
        logger.warning(f"{archive}: skipped {len(unnamed)} images whose names carry no ID, e.g. {unnamed[:3]}")
    return [by_id[id_] for id_ in sorted(by_id)]


def inspect_image(data: bytes) -> tuple[int, int]:
    """(width, height) from the image's header, after checking its format and pixel count; nothing is decoded."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format not in IMAGE_FORMATS:
            raise ValueError(f"it is {image.format}, not one of {', '.join(IMAGE_FORMATS)}")
        width, height = image.size
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        raise ValueError(f"its header declares {width}x{height} pixels, over PIL's limit of {Image.MAX_IMAGE_PIXELS}")
    return width, height


# ---------------------------------------------------------------------------------------------------------------
# Joining images and captions by ID.
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class JoinReport:
    """IDs on one side of the join only."""

    source: str
    images_without_caption: list[str]
    captions_without_image: list[str]

    def log(self) -> None:
        for ids, what in ((self.images_without_caption, "images have no caption (their caption is null)"),
                          (self.captions_without_image, "captions have no image")):
            if ids:
                logger.warning(f"{self.source}: {len(ids)} {what}, e.g. IDs {ids[:5]}")


def compare_ids(source: str, captions: dict[str, str], image_ids: Iterable[str]) -> JoinReport:
    image_ids = set(image_ids)
    return JoinReport(source, sorted(image_ids - captions.keys()), sorted(captions.keys() - image_ids))


def source_rows(source: Source, captions: dict[str, str], images: list[ImageFile], archive: str,
                start_after: Optional[str] = None) -> Iterator[dict[str, Any]]:
    """Rows of a source config, in ID order, from `start_after` on (exclusive)."""
    provenance = dict.fromkeys(PROVENANCE, None) | {"model": source.model}
    for image in images:
        if not _after(image.id, start_after):
            continue
        where = f"{archive}: {image.name!r} (ID {image.id})"
        try:
            data = image.read()
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise SynMirrorError(f"{where} cannot be read ({error}). Download the archive again.") from error
        try:
            width, height = inspect_image(data)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise SynMirrorError(f"{where} is not a usable image: {error}. Replace or remove that file.") from error
        yield {
            "id": image.id,
            "caption": captions.get(image.id),
            "image": {"bytes": data, "path": PurePosixPath(image.name).name},
            "source": source.name,
            **provenance,
            "width": width,
            "height": height,
        }


def join_by_id(captions: dict[str, str], columns: dict[str, Iterator[tuple[str, Any]]]) -> Iterator[dict[str, Any]]:
    """Merge-join ID-sorted (id, value) streams with the captions: one row per ID seen anywhere, None where a
    stream lacks it. Holds one item per stream, whatever the size."""
    heads = {name: _next_in_order(name, stream, None) for name, stream in columns.items()}
    caption_ids = iter(captions)  # read_captions sorts them
    next_caption = next(caption_ids, None)
    while True:
        pending = [head[0] for head in heads.values() if head is not None]
        if next_caption is not None:
            pending.append(next_caption)
        if not pending:
            return
        id_ = min(pending)
        row = {"id": id_, "caption": captions.get(id_)}
        for name, head in heads.items():
            if head is not None and head[0] == id_:
                row[name] = head[1]
                heads[name] = _next_in_order(name, columns[name], id_)
            else:
                row[name] = None
        if next_caption == id_:
            next_caption = next(caption_ids, None)
        yield row


def _next_in_order(name: str, stream: Iterator[tuple[str, Any]], previous: Optional[str]):
    item = next(stream, None)
    if item is not None and previous is not None and item[0] <= previous:
        raise SynMirrorError(f"{name}: ID {item[0]} comes after {previous}; the join needs each source sorted by ID")
    return item


def archive_rows(source: str, captions: dict[str, str], files: Files,
                 start_after: Optional[str] = None) -> Iterator[dict[str, Any]]:
    """Rows of a source config read from its archive or folder, after reporting how its IDs meet the captions."""
    images = read_images(files.images[source], files.work_dir)
    compare_ids(source, captions, (image.id for image in images)).log()
    return source_rows(SOURCES[source], captions, images, files.images[source], start_after)


def config_rows(name: str, captions: dict[str, str], rows_of: Callable[[str], Iterator[dict[str, Any]]],
                start_after: Optional[str] = None) -> Iterator[dict[str, Any]]:
    """The rows of config `name` in ID order, after `start_after`; `rows_of(source)` gives a source's rows."""
    if name == CAPTIONS_CONFIG:
        rows = ({"id": id_, "caption": text} for id_, text in captions.items())
    elif name == PAIRED_CONFIG:
        columns = {source: ((row["id"], row["image"]) for row in rows_of(source)) for source in SOURCES}
        rows = join_by_id(captions, columns)
    else:
        rows = rows_of(name)
    return (row for row in rows if _after(row["id"], start_after))


def _after(id_: str, start_after: Optional[str]) -> bool:
    return start_after is None or id_ > start_after


# ---------------------------------------------------------------------------------------------------------------
# The `datasets` builder.
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SynMirrorConfig(datasets.BuilderConfig):
    """`urls` overrides where files come from ({"nat": url, ..., "captions": url}); `captions_sha256` checks
    an overridden captions URL (the upstream one is always checked)."""

    urls: Optional[dict[str, str]] = None
    captions_sha256: Optional[str] = None


class SynMirror(datasets.GeneratorBasedBuilder):
    """SynMirror: one config per source (`nat`, `sd`, `sdxl`, `infinity`), plus `captions` and `paired`."""

    BUILDER_CONFIG_CLASS = SynMirrorConfig
    BUILDER_CONFIGS = [
        *(SynMirrorConfig(name=s.name, description=f"{s.title}, each with its caption") for s in SOURCES.values()),
        SynMirrorConfig(name=CAPTIONS_CONFIG, description="the BLIP captions alone"),
        SynMirrorConfig(name=PAIRED_CONFIG, description="one row per ID: the caption and each source's image"),
    ]
    DEFAULT_CONFIG_NAME = DEFAULT_CONFIG
    DEFAULT_WRITER_BATCH_SIZE = 100  # rows of images per Arrow batch

    def _info(self):
        return datasets.DatasetInfo(
            description=_DESCRIPTION,
            features=config_features(self.config.name),
            homepage=_HOMEPAGE,
            license=_LICENSE,
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager):
        files = fetch_files(self.config, dl_manager, config_sources(self.config.name))
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={"files": files})]

    def _generate_examples(self, files: Files):
        captions = read_captions(files.captions)
        for row in config_rows(self.config.name, captions, lambda source: archive_rows(source, captions, files)):
            yield row["id"], row


# ---------------------------------------------------------------------------------------------------------------
# Export: Parquet shards and a dataset card, the folder `load_dataset`, streaming and the Hub viewer read.
# ---------------------------------------------------------------------------------------------------------------

MAX_SHARD_BYTES = 500 * 10**6
IMAGE_ROWS_PER_GROUP = 100  # the Hub viewer reads a row group whole...
VIEWER_ROW_GROUP_BYTES = 300 * 10**6  # ...and refuses one over this
ROW_GROUP_BYTES = 100 * 10**6  # so a row group also closes here (`paired` rows hold four images)
TEXT_ROWS_PER_GROUP = 10_000
READ_BATCH_ROWS = 16  # rows read back at a time: a few images per source in memory
SPLIT = "train"
_SHARD = re.compile(rf"{SPLIT}-(\d{{5}})(?:-of-(\d{{5}}))?\.parquet")
_STAGING = ".incomplete"  # hidden: `datasets` never takes files under a dot-folder for data


def rows_per_group(features: datasets.Features) -> int:
    has_image = any(isinstance(feature, datasets.Image) for feature in features.values())
    return IMAGE_ROWS_PER_GROUP if has_image else TEXT_ROWS_PER_GROUP


def shard_paths(directory: Path) -> list[Path]:
    """The whole shards of a config folder, in order (temporary files are not shards)."""
    found = [(int(m[1]), path) for path in directory.glob("*.parquet") if (m := _SHARD.fullmatch(path.name))]
    return [path for _, path in sorted(found)]


class ShardWriter:
    """Writes rows, in order, to Parquet shards `train-00000.parquet`, `train-00001.parquet`, ... of `directory`.

    Rows are in storage form (an image is `{"bytes", "path"}`, written as given). The files are what `datasets`
    writes (its features in the schema, its per-column encodings, content-defined chunking, a page index). A row
    group holds at most `rows_per_group(features)` rows and closes at about ROW_GROUP_BYTES; rows are converted a
    row group at a time, column by column, and a background thread writes one row group while the next is gathered
    (pyarrow releases the GIL). A shard is written under a temporary name and renamed once closed, so a shard that
    exists is whole. A new shard starts before the current one would pass `max_shard_bytes`.
    """

    def __init__(self, directory: Path, features: datasets.Features, *, max_shard_bytes: int = MAX_SHARD_BYTES,
                 first_shard: int = 0):
        self.directory = Path(directory)
        self.features = features
        self.schema = features.arrow_schema
        self.rows_per_group = rows_per_group(features)
        # Room for Parquet's own headers, statistics, page index and footer (about 10 KB, plus 1% for pages).
        self.max_payload = max_shard_bytes - max(max_shard_bytes // 20, 32 * 1024)
        self.shard = first_shard
        self.rows = 0
        self._writer = None
        self._batch: list[dict[str, Any]] = []
        self._batch_payload = 0
        self._payload = 0
        self._background = ThreadPoolExecutor(1, thread_name_prefix="ShardWriter")
        self._writing: Optional[Future] = None  # the row group being written: at most one, so memory stays flat

    def write(self, row: dict[str, Any]) -> None:
        size = _payload_size(row)
        if self._payload and self._payload + size > self.max_payload:
            self._close_shard()
        self._batch.append(row)
        self._batch_payload += size
        self._payload += size
        self.rows += 1
        if len(self._batch) == self.rows_per_group or self._batch_payload >= ROW_GROUP_BYTES:
            self._flush()

    def close(self) -> None:
        if self._payload:
            self._close_shard()
        self._background.shutdown()

    def abort(self) -> None:
        if self._writing is not None:
            self._writing.exception()  # wait; its error, if any, is not the one being reported
        if self._writer is not None:
            self._writer.close()
            self._temporary().unlink(missing_ok=True)
        self._writer, self._writing, self._batch, self._batch_payload, self._payload = None, None, [], 0, 0
        self._background.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, error_type, *_):
        self.abort() if error_type else self.close()

    def _temporary(self) -> Path:
        return self.directory / f".{SPLIT}-{self.shard:05d}.parquet.tmp"

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        from datasets.arrow_writer import get_parquet_column_options

        if self._writer is None:
            cdc = datasets.config.DEFAULT_CDC_OPTIONS
            self._writer = pq.ParquetWriter(self._temporary(), self.schema, write_page_index=True,
                                            use_content_defined_chunking=cdc,
                                            **get_parquet_column_options(self.features, self.schema))
            self._writer.add_key_value_metadata({"content_defined_chunking": json.dumps(cdc)})
        columns = {name: [row[name] for row in self._batch] for name in self.schema.names}
        table = pa.Table.from_pydict(columns, schema=self.schema)
        self._wait()
        self._writing = self._background.submit(self._writer.write_table, table, row_group_size=len(self._batch))
        self._batch, self._batch_payload = [], 0

    def _wait(self) -> None:
        if self._writing is not None:
            self._writing.result()
            self._writing = None

    def _close_shard(self) -> None:
        if self._batch:
            self._flush()
        self._wait()
        self._writer.close()
        os.replace(self._temporary(), self.directory / f"{SPLIT}-{self.shard:05d}.parquet")
        self._writer, self._payload, self.shard = None, 0, self.shard + 1


def _payload_size(row: dict[str, Any]) -> int:
    size = 0
    for value in row.values():
        if isinstance(value, dict):
            size += len(value.get("bytes") or b"")
        elif isinstance(value, str):
            size += len(value)
        else:
            size += 8
    return size


def read_rows(directory: Path, columns: Optional[list[str]] = None) -> Iterator[dict[str, Any]]:
    """The rows of a config folder in order, one row group in memory at a time (`iter_batches` reads ahead)."""
    import pyarrow.parquet as pq

    for shard in shard_paths(directory):
        parquet = pq.ParquetFile(shard)
        for index in range(parquet.num_row_groups):
            for batch in parquet.read_row_group(index, columns=columns).to_batches(max_chunksize=READ_BATCH_ROWS):
                yield from batch.to_pylist()


def read_ids(directory: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [id_ for shard in shard_paths(directory) for id_ in pq.read_table(shard, columns=["id"])["id"].to_pylist()]


def write_config(out: Path, name: str, rows: Callable[[Optional[str]], Iterable[dict[str, Any]]], *,
                 total: Optional[int] = None, max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
    """Write config `name` into `out/name/` from `rows(start_after)`. The shards are staged in a hidden folder;
    a rerun after a crash keeps the whole shards there and goes on after their last ID, and the config folder
    appears, renamed from the staging folder, only when complete."""
    staging = out / _STAGING / name
    staging.mkdir(parents=True, exist_ok=True)
    done = shard_paths(staging)
    ids_done = read_ids(staging) if done else []
    with ShardWriter(staging, config_features(name), max_shard_bytes=max_shard_bytes,
                     first_shard=len(done)) as writer:
        progress = datasets.utils.tqdm(rows(ids_done[-1] if ids_done else None), desc=f"Writing {name}",
                                       unit=" rows", total=total, initial=len(ids_done))
        for row in progress:
            writer.write(row)
    shards = shard_paths(staging)
    if not shards:
        raise SynMirrorError(f"config {name} has no rows to write; see the warnings above")
    for index, shard in enumerate(shards):
        shard.rename(staging / f"{SPLIT}-{index:05d}-of-{len(shards):05d}.parquet")
    os.replace(staging, out / name)


def config_info(out: Path, name: str) -> datasets.DatasetInfo:
    """The card's `dataset_info` for a written config, read from its Parquet footers."""
    import pyarrow.parquet as pq

    footers = [pq.ParquetFile(shard).metadata for shard in shard_paths(out / name)]
    num_bytes = sum(f.row_group(i).total_byte_size for f in footers for i in range(f.num_row_groups))
    splits = datasets.SplitDict()
    splits.add(datasets.SplitInfo(name=SPLIT, num_bytes=num_bytes, num_examples=sum(f.num_rows for f in footers)))
    return datasets.DatasetInfo(
        features=config_features(name),
        splits=splits,
        download_size=sum(shard.stat().st_size for shard in shard_paths(out / name)),
        dataset_size=num_bytes,
    )


def card_yaml(out: Path) -> str:
    """The YAML front matter of the card of the configs written in `out`: `configs` (one default) and
    `dataset_info` per config."""
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    names = [name for name in CONFIG_NAMES if (out / name).is_dir()]
    default = DEFAULT_CONFIG if DEFAULT_CONFIG in names else names[0]
    card_data = DatasetCardData(license="other", pretty_name="SynMirror", size_categories=["10K<n<100K"],
                                task_categories=["text-to-image", "image-classification"])
    MetadataConfigs(
        {
            name: {"data_files": [{"split": SPLIT, "path": f"{name}/{SPLIT}-*.parquet"}]}
            | ({"default": True} if name == default else {})
            for name in names
        }
    ).to_dataset_card_data(card_data)
    DatasetInfosDict({name: config_info(out, name) for name in names}).to_dataset_card_data(card_data)
    return card_data.to_yaml()


def write_card(out: Path, body: Optional[str] = None) -> None:
    """Write `out/README.md`: the YAML of `card_yaml` and `body` (by default a short description)."""
    body = body if body is not None else default_card_body()
    write_atomically(out / "README.md", f"---\n{card_yaml(out)}\n---\n\n{body}".encode())


def default_card_body() -> str:
    sources = "\n".join(f"- `{s.name}`: {s.title}" + (f" (`{s.model}`)" if s.model else "") for s in SOURCES.values())
    return (
        f"# SynMirror\n\n{_DESCRIPTION}\n## Configs\n\n{sources}\n- `{CAPTIONS_CONFIG}`: the BLIP captions alone\n"
        f"- `{PAIRED_CONFIG}`: one row per ID, with the caption and every source's image (null where missing)\n\n"
        "```python\nfrom datasets import load_dataset\n\nds = load_dataset(\"path/to/this/folder\", \"sdxl\")\n```\n\n"
        f"Upstream: {_HOMEPAGE}. License: {_LICENSE}.\n"
    )


def write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def export_problems(out: Path, *, load: bool = True) -> list[str]:
    """What keeps `out` from being a valid export (empty when valid): the card, the shards, and, with `load`,
    each config loaded through `datasets` (streaming, first row decoded)."""
    import pyarrow.parquet as pq
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    out = Path(out)
    problems = [f"{path.name}: a .py file at the root makes `datasets` refuse the folder" for path in out.glob("*.py")]
    if not (out / "README.md").is_file():
        return [*problems, "README.md (the dataset card) is missing"]
    card = DatasetCard.load(out / "README.md")
    configs = MetadataConfigs.from_dataset_card_data(card.data)
    infos = DatasetInfosDict.from_dataset_card_data(card.data)
    defaults = [name for name, meta in configs.items() if meta.get("default")]
    if len(defaults) != 1:
        problems.append(f"README.md: {len(defaults)} configs are marked `default: true`, exactly one must be")
    for name, meta in configs.items():
        problems += _config_problems(out, name, meta, infos.get(name), pq)
    if load and not problems:
        problems += [problem for name in configs if (problem := _load_problem(out, name))]
    return problems


def _config_problems(out: Path, name: str, meta: dict, info, pq) -> list[str]:
    shards = sorted({path for files in meta.get("data_files", []) for path in out.glob(files["path"])})
    if not shards:
        return [f"{name}: its data_files match no file"]
    problems = []
    rows, ids = 0, []
    for shard in shards:
        where = f"{name}/{shard.name}"
        if shard.stat().st_size > MAX_SHARD_BYTES:
            problems.append(f"{where}: {shard.stat().st_size} bytes, over the {MAX_SHARD_BYTES} a shard may hold")
        parquet = pq.ParquetFile(shard)
        footer = parquet.metadata
        metadata = parquet.schema_arrow.metadata or {}
        if b"huggingface" not in metadata:
            problems.append(f"{where}: no `datasets` features in the Parquet schema")
            features = None
        else:
            features = datasets.Features.from_dict(json.loads(metadata[b"huggingface"])["info"]["features"])
        limit = rows_per_group(features) if features else IMAGE_ROWS_PER_GROUP
        groups = [footer.row_group(i) for i in range(footer.num_row_groups)]
        largest = max((group.num_rows for group in groups), default=0)
        if largest > limit:
            problems.append(f"{where}: a row group of {largest} rows, over the {limit} the viewer can read")
        heaviest = max((group.total_byte_size for group in groups), default=0)
        if heaviest > VIEWER_ROW_GROUP_BYTES:
            problems.append(f"{where}: a row group of {heaviest} bytes, over the {VIEWER_ROW_GROUP_BYTES} the viewer reads")
        if footer.num_row_groups and not footer.row_group(0).column(0).has_offset_index:
            problems.append(f"{where}: no page index")
        rows += footer.num_rows
        ids += pq.read_table(shard, columns=["id"])["id"].to_pylist()
    if info is None or info.splits is None or SPLIT not in info.splits:
        problems.append(f"{name}: no dataset_info with a {SPLIT} split in README.md")
    elif info.splits[SPLIT].num_examples != rows:
        problems.append(f"{name}: README.md says {info.splits[SPLIT].num_examples} rows, the shards hold {rows}")
    if any(a >= b for a, b in zip(ids, ids[1:])):
        problems.append(f"{name}: rows are not in strictly increasing ID order")
    return problems


def _load_problem(out: Path, name: str) -> Optional[str]:
    """Load config `name` through `datasets` as a user would (streaming, to the end, the `id` column only), then
    decode its first row with the card's features. Reading a stream to its end also keeps clear of a pyarrow hang
    at exit after an abandoned Parquet stream (apache/arrow#45214)."""
    import pyarrow.parquet as pq

    try:
        stream = datasets.load_dataset(str(out), name, split=SPLIT, streaming=True, columns=["id"])
        if sum(1 for _ in stream) == 0:
            return f"{name}: loads with no rows"
        features = datasets.load_dataset_builder(str(out), name).info.features
        first = next(pq.ParquetFile(shard_paths(out / name)[0]).iter_batches(batch_size=1)).to_pylist()[0]
        features.decode_example(first)
    except Exception as error:  # whatever `datasets` raises is the finding
        return f"{name}: load_dataset fails: {type(error).__name__}: {error}"
    return None


def validate_export(out: Path, *, load: bool = True) -> None:
    """Raise SynMirrorError listing every problem of the export folder `out`, if it has any."""
    problems = export_problems(out, load=load)
    if problems:
        raise SynMirrorError(f"{out} is not a valid SynMirror export:\n- " + "\n- ".join(problems))


@dataclasses.dataclass
class ExportSummary:
    out: Path
    written: list[str]  # configs written by this run
    kept: list[str]  # configs already complete, left as they were
    infos: dict[str, datasets.DatasetInfo]
    reports: list[JoinReport]
    seconds: float

    def table(self) -> str:
        lines = [f"{'config':<10} {'rows':>8} {'bytes':>14} {'shards':>6}  status"]
        for name, info in self.infos.items():
            status = "written" if name in self.written else "kept"
            shards = len(shard_paths(self.out / name))
            lines.append(f"{name:<10} {info.splits[SPLIT].num_examples:>8} {info.download_size:>14} {shards:>6}  {status}")
        for report in self.reports:
            lines.append(f"{report.source}: {len(report.captions_without_image)} captioned IDs without an image"
                         f" {report.captions_without_image[:5]}, {len(report.images_without_caption)} images"
                         f" without a caption {report.images_without_caption[:5]}")
        lines.append(f"{self.out}: done in {self.seconds:.1f} s")
        return "\n".join(lines)


def export_order(configs: Iterable[str]) -> list[str]:
    """The configs to write, in the order they can be written: `paired` is joined from the source configs."""
    wanted = set(configs) or set(CONFIG_NAMES)
    for name in wanted:
        config_sources(name)  # rejects unknown names
    if PAIRED_CONFIG in wanted:
        wanted |= set(SOURCES)
    return [name for name in CONFIG_NAMES if name in wanted]


def discard_configs(out: Path, names: Iterable[str]) -> None:
    """Remove configs from an export folder, finished or staged, so that they are written anew."""
    for name in names:
        shutil.rmtree(Path(out) / name, ignore_errors=True)
        shutil.rmtree(Path(out) / _STAGING / name, ignore_errors=True)


def write_export(out: Path, names: list[str], captions: dict[str, str],
                 source_rows: Callable[[str, Optional[str]], Iterator[dict[str, Any]]], *,
                 max_shard_bytes: int = MAX_SHARD_BYTES, card_body: Optional[Callable[[Path], str]] = None,
                 started: Optional[float] = None) -> ExportSummary:
    """Write the configs `names` (in `export_order`) that `out` lacks: a source config from
    `source_rows(source, start_after)`, `captions` from `captions`, `paired` joined from the written source
    configs; then the card (its body `card_body(out)`, or a short description), then `validate_export`. Configs
    already in `out` are kept."""
    started = time.perf_counter() if started is None else started
    out.mkdir(parents=True, exist_ok=True)
    todo = [name for name in names if not (out / name).is_dir()]
    for name in todo:
        if name == PAIRED_CONFIG:
            total = len(set(captions).union(*(read_ids(out / source) for source in SOURCES)))
            rows_of = lambda source, start_after: read_rows(out / source)  # noqa: E731
        else:
            total = len(captions) if name == CAPTIONS_CONFIG else None
            rows_of = source_rows
        write_config(
            out, name,
            lambda start_after: config_rows(name, captions, lambda s: rows_of(s, start_after), start_after),
            total=total, max_shard_bytes=max_shard_bytes,
        )
    shutil.rmtree(out / _STAGING, ignore_errors=True)
    write_card(out, card_body(out) if card_body else None)
    validate_export(out)
    return ExportSummary(
        out=out,
        written=todo,
        kept=[name for name in names if name not in todo],
        infos={name: config_info(out, name) for name in CONFIG_NAMES if (out / name).is_dir()},
        reports=[compare_ids(s, captions, read_ids(out / s)) for s in SOURCES if (out / s).is_dir()],
        seconds=time.perf_counter() - started,
    )


def export(out, configs: Iterable[str] = (), *, data_dir=None, urls: Optional[dict[str, str]] = None,
           captions_sha256: Optional[str] = None, cache_dir=None, overwrite: bool = False,
           max_shard_bytes: int = MAX_SHARD_BYTES) -> ExportSummary:
    """Fetch SynMirror (or read `data_dir`) and write `configs` (all by default) into `out` as Parquet shards and
    a dataset card; configs already complete in `out` are kept unless `overwrite`. Returns what was done."""
    started = time.perf_counter()
    out = Path(out)
    names = export_order(configs)
    if overwrite:
        discard_configs(out, names)
    config = SynMirrorConfig(name=PAIRED_CONFIG, data_dir=data_dir, urls=urls, captions_sha256=captions_sha256)
    dl_manager = datasets.DownloadManager(
        dataset_name="synmirror", download_config=datasets.DownloadConfig(cache_dir=cache_dir)
    )
    missing_sources = [name for name in names if name in SOURCES and not (out / name).is_dir()]
    if missing_sources or not (out / CAPTIONS_CONFIG).is_dir():
        files = fetch_files(config, dl_manager, missing_sources)
        captions = read_captions(files.captions)
    else:  # nothing to download: the exported captions are the ones fetched before
        files, captions = None, {row["id"]: row["caption"] for row in read_rows(out / CAPTIONS_CONFIG)}
    return write_export(
        out, names, captions, lambda source, start_after: archive_rows(source, captions, files, start_after),
        max_shard_bytes=max_shard_bytes, started=started,
    )


# ---------------------------------------------------------------------------------------------------------------
# The `synmirror` command.
# ---------------------------------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="synmirror", description=_DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser(
        "download", help="fetch SynMirror and write the Parquet + card folder that load_dataset reads",
        description="Fetch SynMirror (Google Drive and the upstream captions, or --data-dir) and write a folder "
        "that `datasets.load_dataset(FOLDER, CONFIG)` reads, streaming included, and that the Hub can serve.",
    )
    get.add_argument("configs", nargs="*", metavar="CONFIG", help=f"any of {', '.join(CONFIG_NAMES)} (default: all)")
    get.add_argument("--out", default="synmirror", help="the folder to write (default: ./synmirror)")
    get.add_argument("--data-dir", help="a folder of manually downloaded files (nat.zip, ..., caption.json)")
    get.add_argument("--cache-dir", help="where downloads are kept (default: the datasets cache)")
    get.add_argument("--url", action="append", default=[], metavar="NAME=URL",
                     help="download NAME (a source or 'captions') from URL instead of upstream; repeatable")
    get.add_argument("--captions-sha256", help="the sha256 a --url captions file must have")
    get.add_argument("--overwrite", action="store_true", help="rewrite configs already complete in --out")
    get.add_argument("--max-shard-size", default="500MB", help="largest Parquet shard (default: 500MB)")
    check = commands.add_parser("validate", help="check an export folder offline")
    check.add_argument("folder")
    args = parser.parse_args(argv)
    try:
        if args.command == "validate":
            validate_export(Path(args.folder))
            print(f"{args.folder}: a valid SynMirror export")
            return 0
        urls = dict(_parse_url_option(option) for option in args.url)
        summary = export(
            args.out, args.configs, data_dir=args.data_dir, urls=urls, captions_sha256=args.captions_sha256,
            cache_dir=args.cache_dir, overwrite=args.overwrite,
            max_shard_bytes=datasets.utils.py_utils.convert_file_size_to_int(args.max_shard_size),
        )
    except SynMirrorError as error:
        print(f"synmirror: error: {error}", file=sys.stderr)
        return 2
    print(summary.table())
    return 0


def _parse_url_option(option: str) -> tuple[str, str]:
    name, sep, url = option.partition("=")
    if not sep or not url:
        raise SynMirrorError(f"--url takes NAME=URL, got {option!r}")
    return name, url


if __name__ == "__main__":
    sys.exit(main())
