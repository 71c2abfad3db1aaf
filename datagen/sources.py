"""Discover inputs from `--source` (a directory, a glob or a list file) and classify each one.

Every path that looks like an input becomes exactly one `SourceItem`; those that cannot be used
carry an `error` (and become failure rows at the `discover` stage) instead of being dropped.
Layered images in their many layouts are recognised by the adapters of `datagen.layered`.
"""

from __future__ import annotations

import csv
import errno
import glob
import hashlib
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from datagen.layered import (
    IMAGE_EXTENSIONS,
    PSD_EXTENSIONS,
    Found,
    MattePair,
    PsdDocument,
    claim_entries,
    recognise_folder,
)
from manifests.errors import ConfigError
from manifests.layers import Adapter, InputKind, Layer, Role

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv"})
SIDECAR_EXTENSIONS = (".json", ".txt")
LIST_EXTENSIONS = frozenset({".txt", ".csv", ".parquet"})
# Folders that hold masks or ground truth, never inputs (DAVIS `Annotations`, SAM2-style `masks`).
MASK_FOLDER_NAMES = frozenset({"masks", "annotations", "ground_truth", "groundtruth", "gt"})
# Frame-folder names that stand for the clip around them (DAVIS `JPEGImages`, SAM2 `frames`).
FRAME_FOLDER_NAMES = frozenset({"frames", "images", "jpegimages", "rgb"})
_FRAME_NAME = re.compile(r"^(frame[_-]?)?\d+$", re.IGNORECASE)


@dataclass(frozen=True)
class SourceItem:
    """One discovered input, before decoding. `uri` is what the decoder opens."""

    input_id: str
    uri: str
    kind: InputKind
    role: Role = Role.ANY
    pool: str = "source"  # "source" or "backgrounds" (from --backgrounds)
    mask_dir: str | None = None
    caption_foreground: str | None = None
    caption_background: str | None = None
    caption_blended: str | None = None
    caption: str | None = None  # a plain `.txt` caption: what the input shows, whatever it is used as
    fps: float | None = None  # frame rate of a frame folder, from a sidecar or list file
    error: str | None = None  # set when the input cannot be used at all
    # a layered image (`datagen.layered`): its layout, the files it is read from (role -> path), the files beside it
    # that it takes as no layer, and per-layer captions (a sidecar's `layers` list, bottom to top)
    adapter: Adapter | None = None
    files: dict[str, str] = field(default_factory=dict)
    companions: tuple[str, ...] = ()
    layer_captions: tuple[str | None, ...] = ()

    @property
    def name(self) -> str:
        return clip_name(self.uri)

    @property
    def background_source(self) -> str:
        """What the input's own background is read from, as provenance: its background file when that lies outside
        the input (a sibling triplet's `bg/x.png`), else the input itself (a folder, a document, a plain image)."""
        background = self.files.get("background")
        inside = background is None or background.startswith(self.uri.rstrip(os.sep) + os.sep)
        return self.uri if inside else background


def clip_name(uri: str) -> str:
    """The name of the footage an input holds: a video's or image's stem (`x.mp4` -> `x`), the folder a `frames/`
    folder stands for (`x/frames` -> `x`), else the folder's own name (DAVIS `JPEGImages/480p/x` -> `x`)."""
    path = PurePosixPath(uri.rstrip("/"))
    if path.name.lower() in FRAME_FOLDER_NAMES:
        return path.parent.name
    return path.stem if path.suffix.lower() in VIDEO_EXTENSIONS | IMAGE_EXTENSIONS else path.name


def input_id(uri: str) -> str:
    return hashlib.sha1(uri.encode("utf-8")).hexdigest()[:16]


def discover(source: str, pool: str = "source", role: Role = Role.ANY) -> list[SourceItem]:
    """All inputs named by `source`, sorted by uri (so ids and plans are deterministic)."""
    path = Path(source).expanduser()
    if any(ch in source for ch in "*?["):
        matches = sorted(glob.glob(os.path.expanduser(source), recursive=True))
        if not matches:
            raise ConfigError(f"--source: the glob {source!r} matches nothing")
        items = []
        for match in matches:
            items.extend(_discover_path(Path(match), pool, role))
    elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
        items = _read_list_file(path, pool, role)
    elif path.exists():
        items = _discover_path(path, pool, role)
    else:
        raise ConfigError(f"--source: {source!r} does not exist (give a directory, a glob or a list file)")
    return _dedupe(sorted(items, key=lambda item: item.uri))


def _discover_path(path: Path, pool: str, role: Role) -> list[SourceItem]:
    if path.is_dir():
        item = _folder_item(path, pool, role)
        if item is not None and not _has_subfolders_with_media(path):
            return [item]
        return list(_walk(path, pool, role, ancestors=frozenset()))
    pair = MattePair.beside(path) if path.suffix.lower() in IMAGE_EXTENSIONS else None
    return [_from_found(pair, pool, role) if pair else _classify_file(path, pool, role)]


def _walk(folder: Path, pool: str, role: Role, ancestors: frozenset[str]):
    """Depth-first walk that follows symlinks but turns loops into failed inputs."""
    real = os.path.realpath(folder)
    ancestors = ancestors | {real}
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as exc:
        yield _failed(folder, pool, role, f"cannot list folder: {exc.strerror or exc}")
        return
    names = {entry.name for entry in entries}
    visible = [Path(entry.path) for entry in entries if not entry.name.startswith(".")]
    claim = claim_entries([p for p in visible if p.is_file()], [p for p in visible if p.is_dir()])  # loops: neither
    for found in claim.found:
        yield _from_found(found, pool, role)
    for path in claim.others:  # what else lies in a claimed folder: captions, or an input of its own
        if not _is_sidecar(path, {p.name for p in path.parent.iterdir()}):
            yield _classify_file(path, pool, role)
    for entry in entries:
        if entry.name.startswith(".") or entry.name in claim.names:
            continue
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir()
            entry.stat()  # follows symlinks: raises on loops and dangling links
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                yield _failed(path, pool, role, "symlink loop")
            else:
                yield _failed(path, pool, role, f"broken symlink or unreadable entry: {exc.strerror or exc}")
            continue
        if is_dir:
            if os.path.realpath(path) in ancestors:
                yield _failed(path, pool, role, "symlink loop: the link points back to a folder that contains it")
                continue
            if entry.name.lower() in MASK_FOLDER_NAMES or entry.name.lower().endswith("_masks"):
                continue
            item = _folder_item(path, pool, role)
            if item is not None:
                yield item
            else:
                yield from _walk(path, pool, role, ancestors)
        elif not _is_sidecar(path, names):
            yield _classify_file(path, pool, role)


def _folder_item(folder: Path, pool: str, role: Role) -> SourceItem | None:
    """A layered-image folder, a frame folder, or None (an ordinary folder to walk into)."""
    found = recognise_folder(folder)
    if found is not None:
        return _from_found(found, pool, role)
    try:
        images = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS]
    except OSError:
        return None
    if len(images) >= 2 and all(_FRAME_NAME.match(p.stem) for p in images):
        return _item(folder, InputKind.FRAME_FOLDER, pool, role)
    return None


def _has_subfolders_with_media(folder: Path) -> bool:
    return any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())


def _is_sidecar(path: Path, names: set[str]) -> bool:
    """`x.json`/`x.txt` beside an input named `x`, or a `captions.*` file: captions, not inputs."""
    if path.suffix.lower() not in SIDECAR_EXTENSIONS:
        return False
    if path.stem.lower() == "captions":
        return True
    return any(n != path.name and (n == path.stem or Path(n).stem == path.stem) for n in names)


def _classify_file(path: Path, pool: str, role: Role) -> SourceItem:
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return _item(path, InputKind.VIDEO, pool, role)
    if suffix in IMAGE_EXTENSIONS:
        return _item(path, InputKind.IMAGE, pool, role)
    if suffix in PSD_EXTENSIONS:
        return _from_found(PsdDocument.recognise(path), pool, role)
    what = f"extension {suffix!r}" if suffix else "no extension"
    return _failed(path, pool, role, f"not a video, image, layered document or frame folder ({what})")


def _from_found(found: Found, pool: str, role: Role) -> SourceItem:
    """The input a layered-image adapter recognised (an image + matte pair is an image until its matte is read)."""
    if found.error is not None:
        return _failed(Path(found.uri), pool, role, found.error)
    kind = InputKind.IMAGE if found.adapter is Adapter.MATTE_PAIR else InputKind.LAYERED_IMAGE
    item = SourceItem(input_id(found.uri), found.uri, kind, role=role, pool=pool, adapter=found.adapter,
                      files=dict(found.files), companions=found.companions)
    return _apply_fields(item, _read_sidecar(item))


def _failed(path: Path, pool: str, role: Role, message: str) -> SourceItem:
    uri = os.path.abspath(path)
    return SourceItem(input_id(uri), uri, InputKind.UNSUPPORTED, role=role, pool=pool, error=message)


def _item(path: Path, kind: InputKind, pool: str, role: Role) -> SourceItem:
    uri = os.path.abspath(path)
    item = SourceItem(input_id(uri), uri, kind, role=role, pool=pool, mask_dir=_mask_dir(path, kind))
    return _apply_fields(item, _read_sidecar(item))


def _mask_dir(path: Path, kind: InputKind) -> str | None:
    """The DAVIS-layout mask folder beside a clip, if there is one (used by `given` matting).

    `clip/frames` <-> `clip/masks`; `JPEGImages/480p/seq` <-> `Annotations/480p/seq`; `x.mp4` <-> `x_masks/`.
    """
    if not kind.is_video:
        return None
    candidates = [path.parent / f"{path.stem}_masks"]
    if path.name.lower() in FRAME_FOLDER_NAMES:
        candidates.append(path.parent / "masks")
    parts = list(path.absolute().parts)
    lowered = [p.lower() for p in parts]
    if "jpegimages" in lowered:
        parts[lowered.index("jpegimages")] = "Annotations"
        candidates.append(Path(*parts))
    return next((os.path.abspath(c) for c in candidates if c.is_dir()), None)


def _read_sidecar(item: SourceItem) -> dict:
    """Captions (and role / fps) from `<name>.json` / `<name>.txt` beside the input or `captions.*` in it."""
    path = Path(item.uri)
    anchor = path.parent if path.name.lower() in FRAME_FOLDER_NAMES else path
    stem = anchor.stem if anchor.is_file() else anchor.name
    candidates = [anchor.parent / f"{stem}{ext}" for ext in SIDECAR_EXTENSIONS]
    if anchor.is_dir():
        candidates = [anchor / f"captions{ext}" for ext in SIDECAR_EXTENSIONS] + candidates
    for candidate in candidates:
        if candidate.is_file():
            return _parse_sidecar(candidate, item.kind)
    return {}


def _parse_sidecar(path: Path, kind: InputKind) -> dict:
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    if path.suffix.lower() == ".txt":
        # A plain caption describes what the input is: an object for RGBA / alpha inputs, else the scene.
        return {"caption": text} if text else {}
    try:
        data = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        return {"error": f"sidecar {path.name} is not valid JSON: {exc.msg} (line {exc.lineno})"}
    return data if isinstance(data, dict) else {"error": f"sidecar {path.name} must hold a JSON object"}


def _apply_fields(item: SourceItem, fields: dict) -> SourceItem:
    """Fold sidecar or list-file fields (captions, per-layer captions, role, fps) into the item."""
    if fields.get("error"):
        return replace(item, error=str(fields["error"]))
    updates: dict = {}
    for layer in (Layer.FOREGROUND, Layer.BACKGROUND, Layer.BLENDED):
        value = fields.get(f"caption_{layer.value}", fields.get(layer.value))
        if value:
            updates[f"caption_{layer.value}"] = str(value).strip()
    if fields.get("caption"):
        updates["caption"] = str(fields["caption"]).strip()
    if isinstance(fields.get("layers"), list):  # per-layer captions, bottom to top
        captions = tuple((str(text).strip() or None) if text is not None else None for text in fields["layers"])
        updates["layer_captions"] = captions
        if not updates.get("caption_foreground") and not item.caption_foreground and any(captions):
            updates["caption_foreground"] = ", ".join(text for text in captions if text)
    if fields.get("role"):
        try:
            updates["role"] = Role(str(fields["role"]).strip().lower())
        except ValueError:
            return replace(item, error=f"unknown role {fields['role']!r} (use any, foreground or background)")
    if fields.get("fps"):
        updates["fps"] = float(fields["fps"])
    return replace(item, **updates)


def _read_list_file(path: Path, pool: str, role: Role) -> list[SourceItem]:
    """txt: one uri per line (# comments); csv / parquet: a `uri` column plus optional caption columns."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        rows = [{"uri": line.strip()} for line in lines if line.strip() and not line.lstrip().startswith("#")]
    elif suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    if rows and "uri" not in rows[0]:
        raise ConfigError(f"--source: list file {path.name} needs a 'uri' column (found {sorted(rows[0])})")
    items = []
    for row in rows:
        uri = Path(str(row["uri"])).expanduser()
        uri = uri if uri.is_absolute() else path.parent / uri
        fields = {k: v for k, v in row.items() if k != "uri" and v not in (None, "")}
        found = _discover_path(uri, pool, role) if uri.exists() else [_failed(uri, pool, role, "file not found")]
        items.extend(_apply_fields(item, fields) if item.error is None else item for item in found)
    return items


def _dedupe(items: list[SourceItem]) -> list[SourceItem]:
    """The same file reached twice (a symlink, a repeated list entry) is used once; the rest fail."""
    seen: dict[str, str] = {}
    ids: set[str] = set()
    out = []
    for item in items:
        real = os.path.realpath(item.uri)
        if item.error is None and real in seen:
            item = replace(item, error=f"same file as {seen[real]}", kind=InputKind.UNSUPPORTED)
        elif item.error is None:
            seen[real] = item.uri
        if item.input_id not in ids:
            ids.add(item.input_id)
            out.append(item)
    return out
