"""Discover inputs from `--source` (a folder, a glob, a list file, or any of them on object storage) and classify
each one.

Every path that looks like an input becomes exactly one `SourceItem`; those that cannot be used carry an `error`
(and become failure rows at the `discover` stage) instead of being dropped, and a second way to the same bytes (a
symlink, a byte copy) is a duplicate of the first (`duplicate_of`, with the reason) and is not built. Layered images
in their many layouts are recognised by the adapters of `datagen.layered`.

Identity (`manifests.identity`): an input's id hashes its pool, its path relative to the source and its size, so the
same files in another folder or on object storage get the same ids. Its `version` (size and modification time, or an
object's ETag) goes into the build record, so resuming over a changed input is refused.

A folder of numbered images is a clip only when a sidecar (`"frame_folder": true`) or `--frame-folders clips` says
so, or when its images look like consecutive frames (`looks_like_frames`); else each image is an input of its own.

Object storage (`s3://bucket/prefix`, `gs://...`, or such URIs in a list file): the source is listed (S3: page by
page, with ETags), the listing is laid out as a local tree of empty placeholder files, and that tree is walked like a
folder, since discovery goes by names. Only sidecars and the few frames that decide whether a folder of numbered
images is a clip are fetched here; an input itself is fetched by the worker that decodes it (`localise`).
"""

from __future__ import annotations

import csv
import errno
import glob
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qsl, urlsplit

import cv2
import numpy as np
from PIL import Image

from datagen.config import FrameFolders
from datagen.layered import (
    IMAGE_EXTENSIONS,
    PSD_EXTENSIONS,
    Found,
    MattePair,
    PsdDocument,
    claim_entries,
    recognise_folder,
)
from manifests import identity, storage
from manifests.errors import ConfigError, StorageError
from manifests.layers import Adapter, InputKind, Layer, Role

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv"})
SIDECAR_EXTENSIONS = (".json", ".txt")
LIST_EXTENSIONS = frozenset({".txt", ".csv", ".parquet"})
# Folders that hold masks or ground truth, never inputs (DAVIS `Annotations`, SAM2-style `masks`).
MASK_FOLDER_NAMES = frozenset({"masks", "annotations", "ground_truth", "groundtruth", "gt"})
# Frame-folder names that stand for the clip around them (DAVIS `JPEGImages`, SAM2 `frames`).
FRAME_FOLDER_NAMES = frozenset({"frames", "images", "jpegimages", "rgb"})
_FRAME_NAME = re.compile(r"^(frame[_-]?)?\d+$", re.IGNORECASE)
_FOLDER_ADAPTERS = (Adapter.FG_BG_FOLDER, Adapter.MULTILAYER_FOLDER)  # a layered input whose uri is its folder
# Consecutive frames (`looks_like_frames`): the mean absolute difference of 32x32 grey thumbnails (0..255) of
# neighbouring images, against that of images half the folder apart. Measured on the shared test data: real clips
# (DAVIS, SAM2, REDS, a 4-frame BMX clip) 3.3-13 between neighbours, 0.12-0.68 of the far pairs; unrelated photos
# (ART sets, backgrounds) 50-85, 0.98-1.14 of the far pairs.
FRAME_PAIRS = 4  # neighbouring pairs compared, evenly spaced through the folder
NEAR_ABSOLUTE = 6.0  # neighbours this close are frames whatever the far pairs say (a static camera)
NEAR_RATIO = 0.75  # else neighbours must be this much closer than far pairs


@dataclass(frozen=True)
class SourceItem:
    """One discovered input, before decoding. `uri` is what the decoder opens (a path, or `s3://...`)."""

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
    # identity (`manifests.identity`): the path relative to the source (posix), bytes, and version (for resuming)
    relative: str = ""
    size: int = 0
    version: str = ""
    group: str | None = None  # the user's group (sidecar or list column `group`); None: the content fingerprint
    # the identity of what is behind the object in this input (sidecar or list column `background_group`): a
    # foreground clip's own scene (its `video_decomposed` background), a layered image's background layer; None: the
    # input's own group (a background clip is its own background)
    background_group: str | None = None
    duplicate_of: str | None = None  # the input id of the input this one duplicates (then it is not built) ...
    duplicate_reason: str | None = None  # ... and how it was seen

    @property
    def name(self) -> str:
        return clip_name(self.uri)

    @property
    def background_source(self) -> str:
        """What the input's own background is read from, as provenance: its background file when that lies outside
        the input (a sibling triplet's `bg/x.png`), else the input itself (a folder, a document, a plain image)."""
        background = self.files.get("background")
        inside = background is None or background.startswith(self.uri.rstrip("/") + "/")
        return self.uri if inside else background

    @property
    def is_folder(self) -> bool:
        """Its uri names a folder (a frame folder, a layered-image folder), not a file."""
        return self.kind in (InputKind.FRAME_FOLDER, InputKind.ALPHA_FRAME_FOLDER) or self.adapter in _FOLDER_ADAPTERS


@dataclass(frozen=True)
class Discovery:
    """What `discover_source` found, and how the source was listed (object storage: objects and list requests)."""

    items: list[SourceItem]
    listed_objects: int = 0
    list_pages: int = 0


def clip_name(uri: str) -> str:
    """The name of the footage an input holds: a video's or image's stem (`x.mp4` -> `x`), the folder a `frames/`
    folder stands for (`x/frames` -> `x`), else the folder's own name (DAVIS `JPEGImages/480p/x` -> `x`)."""
    path = PurePosixPath(_plain(uri).rstrip("/"))
    if path.name.lower() in FRAME_FOLDER_NAMES:
        return path.parent.name
    return path.stem if path.suffix.lower() in VIDEO_EXTENSIONS | IMAGE_EXTENSIONS else path.name


def frame_order(paths: list[Path]) -> list[Path]:
    """Image files in frame order (numeric stems sort numerically)."""
    return sorted(paths, key=lambda p: (int("".join(c for c in p.stem if c.isdigit()) or 0), p.name))


def looks_like_frames(files: list[Path], content: Callable[[Path], Path] = lambda path: path) -> bool:
    """Whether ordered images are consecutive frames of one clip: the images compared share one size, and
    neighbours are close (`NEAR_ABSOLUTE`) or much closer than images half the folder apart (`NEAR_RATIO`).

    Up to `FRAME_PAIRS` neighbouring pairs, evenly spaced, are compared (with their far partners): a few images are
    read, not the folder. `content`: the local file of an image (object storage: fetched on demand)."""
    count, offset = len(files), max(2, len(files) // 2)
    starts = identity.fingerprint_positions(count - 1, FRAME_PAIRS)
    far = {s: s + offset if s + offset < count else s - offset for s in starts}  # half the folder away (reflected)
    far = {s: partner for s, partner in far.items() if partner >= 0}  # a folder of 2 or 3 has no far pair for some
    thumbs: dict[int, np.ndarray] = {}
    sizes = set()
    try:
        for index in sorted({i for s in starts for i in (s, s + 1, *([far[s]] if s in far else []))}):
            with Image.open(content(files[index])) as image:
                sizes.add(image.size)
                image.draft("L", (64, 64))  # JPEG: decode at a fraction of the size
                grey = np.asarray(image.convert("L"), np.float32)
            thumbs[index] = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA)
    except (OSError, ValueError, StorageError):  # an unreadable image: not a clip (each image fails on its own)
        return False
    if len(sizes) > 1:
        return False
    near_diff = float(np.median([np.abs(thumbs[s] - thumbs[s + 1]).mean() for s in starts]))
    if near_diff <= NEAR_ABSOLUTE:
        return True
    far_diffs = [np.abs(thumbs[s] - thumbs[partner]).mean() for s, partner in far.items()]
    return bool(far_diffs) and near_diff <= NEAR_RATIO * float(np.median(far_diffs))


class _Tree:
    """Where discovery walks: local paths as they are, or the placeholder tree of an object-store listing (`root`
    holds `bucket/key` for every listed object: empty files, except sidecars and the frames looked at)."""

    def __init__(self, root: Path | None = None, scheme: str = "", query: str = "",
                 objects: dict[str, storage.ObjectInfo] | None = None, etags: bool = False) -> None:
        self.root, self.scheme, self.query, self.objects, self.etags = root, scheme, query, objects or {}, etags

    def uri(self, path: str | Path) -> str:
        if self.root is None:
            return os.path.abspath(path)
        inside = Path(os.path.abspath(path)).relative_to(self.root).as_posix()
        return f"{self.scheme}://{inside}" + (f"?{self.query}" if self.query else "")

    def stat(self, path: Path) -> tuple[int, str]:
        """Size and version of one file: size and mtime here; on object storage, as listed (ETag or mtime)."""
        if self.root is None:
            try:
                stat = os.stat(path)
            except OSError:
                return 0, ""
            return stat.st_size, f"mtime:{stat.st_size}:{stat.st_mtime_ns}"
        info = self.objects.get(Path(os.path.abspath(path)).relative_to(self.root).as_posix())
        if info is None:
            return 0, ""
        return info.size, (f"etag:{info.version}" if self.etags else f"mtime:{info.size}:{info.version}")

    def content(self, path: Path) -> Path:
        """`path` with its real bytes (on object storage: fetched into the placeholder first)."""
        size, version = self.stat(path)
        if self.root is not None and size and path.stat().st_size == 0:
            storage.fetch(self.uri(path), path, version=_etag(version))
        return path


LOCAL = _Tree()


@dataclass(frozen=True)
class _Walk:
    """What every step of one discovery needs."""

    pool: str
    role: Role
    frame_folders: FrameFolders
    tree: _Tree = LOCAL
    page_size: int = 1000


@dataclass
class _Counts:
    objects: int = 0
    pages: int = 0


def discover(source: str, pool: str = "source", role: Role = Role.ANY,
             frame_folders: FrameFolders = FrameFolders.AUTO) -> list[SourceItem]:
    """All inputs named by `source`, sorted by their path relative to it (so ids and plans are deterministic)."""
    return discover_source(source, pool, role, frame_folders).items


def discover_source(source: str, pool: str = "source", role: Role = Role.ANY,
                    frame_folders: FrameFolders = FrameFolders.AUTO, page_size: int = 1000) -> Discovery:
    """`discover`, with how the source was listed."""
    walk, counts = _Walk(pool, role, FrameFolders(frame_folders), page_size=page_size), _Counts()
    path = Path(source).expanduser()
    if Path(_plain(source)).suffix.lower() in LIST_EXTENSIONS and (storage.is_remote(source) or path.is_file()):
        found = _read_list_file(source, walk, counts)
        base = _common_parent([item.uri for item, _ in found])
    elif storage.is_remote(source):
        found = _discover_remote(source, walk, counts)
        if not found:
            raise ConfigError(f"--source: {source!r} holds no object (check the bucket, the prefix and the endpoint)")
        base = _plain(source).rstrip("/")
    elif any(ch in source for ch in "*?["):
        matches = sorted(glob.glob(os.path.expanduser(source), recursive=True))
        if not matches:
            raise ConfigError(f"--source: the glob {source!r} matches nothing")
        found = [entry for match in matches for entry in _discover_local(Path(match), walk)]
        fixed = [part for part in Path(os.path.expanduser(source)).parts if not any(ch in part for ch in "*?[")]
        base = os.path.abspath(Path(*fixed)) if fixed else os.getcwd()
    elif path.exists():
        found = _discover_local(path, walk)
        base = os.path.abspath(path if path.is_dir() else path.parent)
    else:
        raise ConfigError(f"--source: {source!r} does not exist (give a directory, a glob or a list file)")
    identified = []
    for item, key in found:
        relative = _relative_to(item.uri, base)
        identified.append((replace(item, relative=relative, input_id=identity.input_id(pool, relative, item.size)),
                           key))
    identified.sort(key=lambda entry: (entry[0].relative, entry[0].uri))
    return Discovery(_dedupe(identified), counts.objects, counts.pages)


def _plain(uri: str) -> str:
    """A uri without its query (`?endpoint_override=...`)."""
    return uri.split("?", 1)[0] if storage.is_remote(uri) else uri


def _relative_to(uri: str, base: str) -> str:
    """`uri`'s posix path under `base`; its own name when it is not under it (the source is that one input)."""
    uri, base = _plain(uri), base.rstrip("/")
    return uri[len(base) + 1 :] if uri.startswith(base + "/") else PurePosixPath(uri.rstrip("/")).name


def _common_parent(uris: list[str]) -> str:
    """The deepest folder above every uri (a list file's inputs are named relative to it)."""
    parents = [_plain(uri).rstrip("/").split("/")[:-1] for uri in uris]
    if not parents:
        return ""
    common = parents[0]
    for parts in parents[1:]:
        size = next((i for i, (a, b) in enumerate(zip(common, parts)) if a != b), min(len(common), len(parts)))
        common = common[:size]
    return "/".join(common)


def _discover_local(path: Path, walk: _Walk) -> list[tuple[SourceItem, tuple | None]]:
    return [_finish(item, LOCAL) for item in _discover_path(path, walk)]


def _discover_remote(uri: str, walk: _Walk, counts: _Counts) -> list[tuple[SourceItem, tuple | None]]:
    """The inputs under an object-store URI (or the one object it names), walked in a placeholder tree."""
    listing, etags = list_source(uri, walk.page_size)
    counts.objects += len(listing.objects)
    counts.pages += listing.pages
    if not listing.objects:
        return []
    if [info.path for info in listing.objects] == [storage.resolve(uri)[1]]:  # one object: its sidecar beside it
        stem = _plain(uri).rsplit(".", 1)[0] if "." in PurePosixPath(_plain(uri)).name else _plain(uri)
        query = f"?{urlsplit(uri).query}" if urlsplit(uri).query else ""
        for ext in SIDECAR_EXTENSIONS:
            beside, _ = list_source(f"{stem}{ext}{query}", walk.page_size)
            listing = storage.Listing(listing.objects + beside.objects, listing.pages + beside.pages)
    with _placeholder_tree(uri, listing, etags) as (tree, path):
        return [_finish(item, tree) for item in _discover_path(path, replace(walk, tree=tree))]


@contextmanager
def _placeholder_tree(uri: str, listing: storage.Listing, etags: bool) -> Iterator[tuple[_Tree, Path]]:
    """A local tree of empty files laid out like the listing (sidecars fetched), deleted afterwards."""
    parent = storage.cache_root() / "listings"
    parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="listing-", dir=parent))
    try:
        split = urlsplit(uri)
        objects = {info.path: info for info in listing.objects}
        tree = _Tree(root, split.scheme, split.query, objects, etags)
        for name in objects:
            placeholder = root.joinpath(*PurePosixPath(name).parts)
            placeholder.parent.mkdir(parents=True, exist_ok=True)
            placeholder.touch()
        sidecars = [root.joinpath(*PurePosixPath(name).parts) for name in objects
                    if PurePosixPath(name).suffix.lower() in SIDECAR_EXTENSIONS]
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(tree.content, sidecars))
        yield tree, root.joinpath(*PurePosixPath(storage.resolve(uri)[1]).parts)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def list_source(uri: str, page_size: int = 1000) -> tuple[storage.Listing, bool]:
    """Every object under an object-store URI, and whether their versions are ETags. S3 is listed with ListObjectsV2
    (boto3, which reads the same AWS environment as pyarrow), page by page, since pyarrow's listing has no ETag;
    other stores through pyarrow (`storage.list_objects`), with modification times."""
    if urlsplit(uri).scheme.lower() != "s3":
        return storage.list_objects(uri), False
    import boto3
    import botocore.exceptions

    query = dict(parse_qsl(urlsplit(uri).query))
    endpoint = query.get("endpoint_override")
    if endpoint and "://" not in endpoint:
        endpoint = f"{query.get('scheme', 'https')}://{endpoint}"
    client = boto3.client("s3", endpoint_url=endpoint or None, region_name=query.get("region"))
    bucket, _, key = storage.resolve(uri)[1].partition("/")
    objects, pages = [], 0
    try:
        paginator = client.get_paginator("list_objects_v2")
        prefix = f"{key.rstrip('/')}/" if key else ""
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}):
            pages += 1
            objects += [storage.ObjectInfo(f"{bucket}/{entry['Key']}", entry["Size"], storage.etag(entry))
                        for entry in page.get("Contents", []) if _usable_key(entry["Key"])]
        if not objects and key:  # not a prefix: the one object the URI names, if it is one
            pages += 1
            head = client.head_object(Bucket=bucket, Key=key)
            objects = [storage.ObjectInfo(f"{bucket}/{key}", head["ContentLength"], storage.etag(head))]
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return storage.Listing([], pages), True
        raise StorageError(storage.explain(uri, exc)) from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise StorageError(storage.explain(uri, exc)) from exc
    return storage.Listing(sorted(objects, key=lambda info: info.path), pages), True


def _usable_key(key: str) -> bool:
    """A key that names a file (not a folder marker) and lays out as a path (no empty, `.` or `..` parts)."""
    parts = key.split("/")
    return not key.endswith("/") and all(part not in ("", ".", "..") for part in parts)


def _etag(version: str) -> str | None:
    return version[len("etag:"):] if version.startswith("etag:") else None


def _finish(item: SourceItem, tree: _Tree) -> tuple[SourceItem, tuple | None]:
    """A walked item named by its uri (object storage: `s3://...`), with its size and version; and what tells a
    second way to the same bytes (a real path here, an ETag on object storage), None for folders on object storage."""
    path = Path(item.uri)
    members = _members(item, path)
    stats = [tree.stat(member) for member in members]
    size = sum(size for size, _ in stats)
    if len(members) == 1:
        version = stats[0][1]
    else:
        lines = [f"{os.path.relpath(m, path)}:{v}" for m, (_, v) in zip(members, stats)]
        version = "sha1:" + hashlib.sha1("\n".join(lines).encode()).hexdigest()
    key = None
    if tree.root is None:
        key = ("path", os.path.realpath(path), size, path.is_file())
    elif len(members) == 1 and not item.is_folder and _etag(version):
        key = ("etag", _etag(version), size)
    named = replace(item, uri=tree.uri(path), files={role: tree.uri(f) for role, f in item.files.items()},
                    companions=tuple(tree.uri(c) for c in item.companions),
                    mask_dir=tree.uri(item.mask_dir) if item.mask_dir else None, size=size, version=version)
    return named, key


def _members(item: SourceItem, path: Path) -> list[Path]:
    """The files an input is made of: itself, its folder's files (a frame folder's images), its layered files."""
    files = {Path(f) for f in item.files.values()}
    try:
        if path.is_dir():
            inside = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
            if item.kind is InputKind.FRAME_FOLDER:
                inside = [p for p in inside if p.suffix.lower() in IMAGE_EXTENSIONS]
            files |= set(inside)
        elif path.is_file():
            files.add(path)
    except OSError:
        pass  # a loop or an unreadable folder: a failed input with nothing in it
    return sorted(files)


def _dedupe(found: list[tuple[SourceItem, tuple | None]]) -> list[SourceItem]:
    """The same entry twice (a repeated list line) is one input; a second way to the same bytes (a symlink, a second
    path, a byte-for-byte copy) is a duplicate of the first, which alone is built."""
    same_size = {}
    for _, key in found:
        if key and key[0] == "path" and key[3]:
            same_size[key[2]] = same_size.get(key[2], 0) + 1
    first: dict[tuple, SourceItem] = {}
    ids: set[str] = set()
    out = []
    for item, key in found:
        if item.input_id in ids:
            continue
        ids.add(item.input_id)
        if item.error is None and key is not None:
            keys = [key[:2]]
            if key[0] == "path" and key[3] and same_size[key[2]] > 1 and key[2] > 0:
                keys.append(("sha256", _sha256(key[1]), key[2]))
            earlier = next(((k, first[k]) for k in keys if k in first), None)
            if earlier is not None:
                how = "the same file as" if earlier[0][0] == "path" else "a byte-for-byte copy of"
                item = replace(item, duplicate_of=earlier[1].input_id,
                               duplicate_reason=f"{how} {earlier[1].relative} (built once, from there)")
            else:
                first.update({k: item for k in keys})
        out.append(item)
    return out


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def localise(item: SourceItem, folder: Path) -> tuple[SourceItem, dict[str, str]]:
    """An input on object storage fetched into `folder` (by the worker that decodes it): the item with local paths,
    and the uri each local path stands for. A missing or changed object raises `StorageError` (one line naming it),
    so the input fails at decode."""
    names: dict[str, str] = {}

    def local(uri: str) -> Path:
        path = folder.joinpath(*PurePosixPath(_plain(uri).split("://", 1)[1]).parts)
        names[str(path)] = uri
        return path

    def fetch_folder(uri: str, images_only: bool) -> None:
        local(uri).mkdir(parents=True, exist_ok=True)
        wanted = [name for name in storage.list_files(uri) if "/" not in name and not name.startswith(".")
                  and (not images_only or PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS)]
        if not wanted:
            raise StorageError(f"{uri}: no longer holds any file (it changed since it was listed)")
        for name in wanted:
            storage.fetch(storage.join(uri, name), local(storage.join(uri, name)))

    if item.is_folder:
        fetch_folder(item.uri, images_only=item.adapter is None)
    else:
        storage.fetch(item.uri, local(item.uri), version=_etag(item.version))
    for uri in item.files.values():
        if not local(uri).exists():
            storage.fetch(uri, local(uri))
    if item.mask_dir:
        fetch_folder(item.mask_dir, images_only=True)
    fetched = replace(item, uri=str(local(item.uri)), files={role: str(local(f)) for role, f in item.files.items()},
                      mask_dir=str(local(item.mask_dir)) if item.mask_dir else None)
    return fetched, names


def _discover_path(path: Path, walk: _Walk) -> list[SourceItem]:
    if path.is_dir():
        item = _folder_item(path, walk)
        if item is not None and not _has_subfolders_with_media(path):
            return [item]
        return list(_walk(path, walk, ancestors=frozenset()))
    pair = MattePair.beside(path) if path.suffix.lower() in IMAGE_EXTENSIONS else None
    return [_from_found(pair, walk) if pair else _classify_file(path, walk)]


def _walk(folder: Path, walk: _Walk, ancestors: frozenset[str]):
    """Depth-first walk that follows symlinks but turns loops into failed inputs."""
    real = os.path.realpath(folder)
    ancestors = ancestors | {real}
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as exc:
        yield _failed(folder, walk, f"cannot list folder: {exc.strerror or exc}")
        return
    names = {entry.name for entry in entries}
    visible = [Path(entry.path) for entry in entries if not entry.name.startswith(".")]
    claim = claim_entries([p for p in visible if p.is_file()], [p for p in visible if p.is_dir()])  # loops: neither
    for found in claim.found:
        yield _from_found(found, walk)
    for path in claim.others:  # what else lies in a claimed folder: captions, or an input of its own
        if not _is_sidecar(path, {p.name for p in path.parent.iterdir()}):
            yield _classify_file(path, walk)
    # a found input's own file (a matte pair's image) is that input, not a plain image beside it
    claimed = claim.names | {Path(found.uri).name for found in claim.found if Path(found.uri).parent == folder}
    for entry in entries:
        if entry.name.startswith(".") or entry.name in claimed:
            continue
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir()
            entry.stat()  # follows symlinks: raises on loops and dangling links
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                yield _failed(path, walk, "symlink loop")
            else:
                yield _failed(path, walk, f"broken symlink or unreadable entry: {exc.strerror or exc}")
            continue
        if is_dir:
            if os.path.realpath(path) in ancestors:
                yield _failed(path, walk, "symlink loop: the link points back to a folder that contains it")
                continue
            if entry.name.lower() in MASK_FOLDER_NAMES or entry.name.lower().endswith("_masks"):
                continue
            item = _folder_item(path, walk)
            if item is not None:
                yield item
            else:
                yield from _walk(path, walk, ancestors)
        elif not _is_sidecar(path, names):
            yield _classify_file(path, walk)


def _folder_item(folder: Path, walk: _Walk) -> SourceItem | None:
    """A layered-image folder, a frame folder, or None (an ordinary folder to walk into)."""
    found = recognise_folder(folder)
    if found is not None:
        return _from_found(found, walk)
    try:
        images = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS]
    except OSError:
        return None
    if len(images) >= 2 and all(_FRAME_NAME.match(p.stem) for p in images) and _is_clip(folder, images, walk):
        return _item(folder, InputKind.FRAME_FOLDER, walk)
    return None


def _is_clip(folder: Path, images: list[Path], walk: _Walk) -> bool:
    """A folder of numbered images is a clip if its sidecar says so (`"frame_folder": true/false`), else as
    `--frame-folders` says: always, never, or (auto) when its images look like consecutive frames."""
    said = _read_sidecar(folder, InputKind.FRAME_FOLDER).get("frame_folder")
    if isinstance(said, bool):
        return said
    if walk.frame_folders == FrameFolders.CLIPS:
        return True
    if walk.frame_folders == FrameFolders.IMAGES:
        return False
    return looks_like_frames(frame_order(images), walk.tree.content)


def _has_subfolders_with_media(folder: Path) -> bool:
    return any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())


def _is_sidecar(path: Path, names: set[str]) -> bool:
    """`x.json`/`x.txt` beside an input named `x`, or a `captions.*` file: captions, not inputs."""
    if path.suffix.lower() not in SIDECAR_EXTENSIONS:
        return False
    if path.stem.lower() == "captions":
        return True
    return any(n != path.name and (n == path.stem or Path(n).stem == path.stem) for n in names)


def _classify_file(path: Path, walk: _Walk) -> SourceItem:
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return _item(path, InputKind.VIDEO, walk)
    if suffix in IMAGE_EXTENSIONS:
        return _item(path, InputKind.IMAGE, walk)
    if suffix in PSD_EXTENSIONS:
        return _from_found(PsdDocument.recognise(path), walk)
    what = f"extension {suffix!r}" if suffix else "no extension"
    return _failed(path, walk, f"not a video, image, layered document or frame folder ({what})")


def _from_found(found: Found, walk: _Walk) -> SourceItem:
    """The input a layered-image adapter recognised (an image + matte pair is an image until its matte is read)."""
    if found.error is not None:
        return _failed(Path(found.uri), walk, found.error)
    kind = InputKind.IMAGE if found.adapter is Adapter.MATTE_PAIR else InputKind.LAYERED_IMAGE
    item = SourceItem("", found.uri, kind, role=walk.role, pool=walk.pool, adapter=found.adapter,
                      files=dict(found.files), companions=found.companions)
    return _apply_fields(item, _read_sidecar(Path(item.uri), item.kind))


def _failed(path: Path, walk: _Walk, message: str) -> SourceItem:
    return SourceItem("", os.path.abspath(path), InputKind.UNSUPPORTED, role=walk.role, pool=walk.pool, error=message)


def _item(path: Path, kind: InputKind, walk: _Walk) -> SourceItem:
    item = SourceItem("", os.path.abspath(path), kind, role=walk.role, pool=walk.pool, mask_dir=_mask_dir(path, kind))
    return _apply_fields(item, _read_sidecar(path, kind))


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


def _read_sidecar(path: Path, kind: InputKind) -> dict:
    """Captions (and role / fps / group / background_group / frame_folder) from `<name>.json` / `<name>.txt` beside
    the input at `path` or `captions.*` in it."""
    anchor = path.parent if path.name.lower() in FRAME_FOLDER_NAMES else path
    stem = anchor.stem if anchor.is_file() else anchor.name
    candidates = [anchor.parent / f"{stem}{ext}" for ext in SIDECAR_EXTENSIONS]
    if anchor.is_dir():
        candidates = [anchor / f"captions{ext}" for ext in SIDECAR_EXTENSIONS] + candidates
    for candidate in candidates:
        if candidate.is_file():
            return _parse_sidecar(candidate, kind)
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
    """Fold sidecar or list-file fields (captions, per-layer captions, role, fps, group, background_group) into the
    item."""
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
    for name in ("group", "background_group"):
        if fields.get(name) not in (None, ""):
            updates[name] = str(fields[name]).strip()
    return replace(item, **updates)


def _read_list_file(source: str, walk: _Walk, counts: _Counts) -> list[tuple[SourceItem, tuple | None]]:
    """txt: one uri per line (# comments); csv / parquet: a `uri` column plus optional caption, role, fps, group and
    background_group columns. A uri may be a path (relative to the list file) or on object storage; the list file
    itself too."""
    remote = storage.is_remote(source)
    name = PurePosixPath(_plain(source)).name
    data = storage.read_bytes(source) if remote else Path(source).expanduser().read_bytes()
    suffix = PurePosixPath(name).suffix.lower()
    if suffix == ".txt":
        lines = data.decode("utf-8").splitlines()
        rows = [{"uri": line.strip()} for line in lines if line.strip() and not line.lstrip().startswith("#")]
    elif suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = pq.read_table(pa.BufferReader(data)).to_pylist()
    if rows and "uri" not in rows[0]:
        raise ConfigError(f"--source: list file {name} needs a 'uri' column (found {sorted(rows[0])})")
    out = []
    for row in rows:
        entry = str(row["uri"]).strip()
        fields = {k: v for k, v in row.items() if k != "uri" and v not in (None, "")}
        if storage.is_remote(entry) or (remote and not entry.startswith("/")):
            query = f"?{urlsplit(source).query}" if urlsplit(source).query else ""
            target = entry if storage.is_remote(entry) else storage.join(_plain(source).rsplit("/", 1)[0] + query,
                                                                         entry)
            found = _discover_remote(target, walk, counts) or [(_missing(target, walk), None)]
        else:
            path = Path(entry).expanduser()
            path = path if path.is_absolute() else Path(source).expanduser().parent / path
            found = _discover_local(path, walk) if path.exists() else [(_missing(os.path.abspath(path), walk), None)]
        out.extend(((_apply_fields(item, fields) if item.error is None else item), key) for item, key in found)
    return out


def _missing(uri: str, walk: _Walk) -> SourceItem:
    return SourceItem("", uri, InputKind.UNSUPPORTED, role=walk.role, pool=walk.pool, error="file not found")
