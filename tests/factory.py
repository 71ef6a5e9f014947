"""Writes small SynMirror releases in the upstream shape, for tests and benchmarks.

A release is a captions JSON plus one archive (or folder) per source, holding real PNG/JPEG/WebP files. Images of
the same ID share a pattern drawn from the ID, with a little per-source noise, so same-ID images are alike (as the
real sources are) and different IDs are not. Layouts and defects are chosen per source.
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

import synmirror

# The file format each source is written in: PNG, JPEG and WebP all appear.
FORMATS = {"nat": "png", "sd": "jpg", "sdxl": "png", "infinity": "webp"}
LAYOUTS = ("zip", "zip-nested", "tar", "tar.gz", "tgz", "folder")
JUNK = {"__MACOSX/._00000.png": b"\x00\x05\x16\x07", ".DS_Store": b"\x00\x00\x00\x01Bud1", "notes.txt": b"hello"}


def make_image(id_: str, source: str, size: int = 32, fmt: str = "png", grain: float = 0.0) -> bytes:
    """An image whose content depends on the ID (shared by all sources) plus a little source-specific noise.
    `grain` adds per-pixel noise, which gives files of realistic size (a photo does not compress like a gradient)."""
    base = np.random.default_rng(int(id_)).random((4, 4, 3))
    rng = np.random.default_rng([int(id_), list(synmirror.SOURCES).index(source)])
    small = (0.85 * base + 0.15 * rng.random((4, 4, 3))) * 255
    pixels = np.asarray(Image.fromarray(small.astype(np.uint8)).resize((size, size), Image.BILINEAR), np.float32)
    if grain:
        pixels += rng.normal(0, grain * 255, pixels.shape).astype(np.float32)
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    out = io.BytesIO()
    image.save(out, format={"jpg": "JPEG", "jpeg": "JPEG"}.get(fmt, fmt.upper()), quality=90)
    return out.getvalue()


def caption_for(id_: str) -> str:
    return f"a photo of person {int(id_)} smiling"


@dataclasses.dataclass
class Release:
    root: Path
    captions: dict[str, str]
    images: dict[str, dict[str, bytes]]  # source -> ID -> bytes as stored
    paths: dict[str, Path]  # source -> archive or folder; "captions" -> captions file


def write_release(
    root: Path,
    ids: Sequence[str] | int = 8,
    *,
    layouts: Optional[dict[str, str]] = None,
    missing: Optional[dict[str, Sequence[str]]] = None,
    uncaptioned: Sequence[str] = (),
    size: int = 32,
    grain: float = 0.0,
    junk: bool = True,
    captions_name: str = "captioin.json",
) -> Release:
    """Write a release under `root`: `ids` (a count or a list), `layouts` per source (default: one of each kind),
    `missing` images per source, and IDs in `uncaptioned` left out of the captions."""
    ids = [synmirror.format_id(i) for i in range(ids)] if isinstance(ids, int) else list(ids)
    layouts = {**dict(zip(synmirror.SOURCES, ("zip", "zip-nested", "tar.gz", "folder"))), **(layouts or {})}
    missing = missing or {}
    root.mkdir(parents=True, exist_ok=True)
    captions = {id_: caption_for(id_) for id_ in ids if id_ not in uncaptioned}
    captions_path = root / captions_name
    captions_path.write_text(json.dumps(captions))
    release = Release(root, captions, {}, {"captions": captions_path})
    for source, layout in layouts.items():
        fmt = FORMATS[source]
        images = {id_: make_image(id_, source, size, fmt, grain) for id_ in ids if id_ not in missing.get(source, ())}
        members = {member_name(id_, fmt, layout, source): data for id_, data in images.items()}
        if junk:
            members.update(JUNK)
        release.images[source] = images
        release.paths[source] = write_members(root, source, layout, members)
    return release


def member_name(id_: str, fmt: str, layout: str, source: str) -> str:
    if layout == "zip-nested":  # a top folder, then FFHQ-style chunk folders of 1,000
        return f"{source}/{int(id_) // 1000 * 1000:05d}/{id_}.{fmt}"
    return f"{id_}.{fmt}"


def write_members(root: Path, source: str, layout: str, members: dict[str, bytes]) -> Path:
    """An archive (or folder) named `<source>` + the layout's suffix holding `members` ({name: bytes})."""
    root.mkdir(parents=True, exist_ok=True)
    if layout == "folder":
        path = root / source
        for name, data in members.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
        return path
    if layout.startswith("zip"):
        path = root / f"{source}.zip"
        with zipfile.ZipFile(path, "w") as archive:  # stored: images are compressed already
            for name, data in members.items():
                archive.writestr(name, data)
        return path
    path = root / f"{source}.{layout}"
    with tarfile.open(path, "w:gz" if layout in ("tar.gz", "tgz") else "w") as archive:
        for name, data in members.items():
            add_tar_member(archive, name, data)
    return path


def add_tar_member(archive: tarfile.TarFile, name: str, data: bytes = b"", link: Optional[str] = None) -> None:
    info = tarfile.TarInfo(name)
    if link is not None:
        info.type, info.linkname = tarfile.SYMTYPE, link
        archive.addfile(info)
    else:
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares `width`x`height`: enough for PIL to read its size, never decodable."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


DRIVE_QUOTA_PAGE = b"""<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>
<p class="uc-error-caption">Sorry, you can't view or download this file at this time.</p>
<p class="uc-error-subcaption">Too many users have viewed or downloaded this file recently. Please try accessing the file again later.</p>
</body></html>"""
