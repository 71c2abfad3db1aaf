"""Where a dataset lives: any pyarrow filesystem URI (`s3://bucket/prefix`, `gs://bucket/prefix`, `file:///x`, a path).

One code path serves local folders and object stores: `resolve` turns a URI into a pyarrow filesystem and the path
inside it, and the helpers below copy files and whole trees between a local folder and that URI. Every file brought
here goes through `fetch` (a temporary name, then a rename), so no reader ever sees a partial copy. Relative paths are
posix (`media/abc/alpha.mkv`) and are refused if they are absolute or contain `..`, so nothing escapes a prefix.

S3 (and S3-compatible servers such as MinIO, Ceph or moto) is configured by the standard AWS environment variables,
read by the AWS SDK inside pyarrow (so a subprocess started with the same environment reaches the same store):

- `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN` for temporary credentials), or
  `~/.aws/credentials` / `AWS_PROFILE`;
- `AWS_DEFAULT_REGION` or `AWS_REGION` (or `?region=` in the URI);
- `AWS_ENDPOINT_URL` or `AWS_ENDPOINT_URL_S3` (the latter wins), e.g. `http://127.0.0.1:9000`, for a server other
  than AWS: `pyarrow.fs.FileSystem.from_uri` reads both (checked with pyarrow 26; `AWS_ENDPOINT_URL` is read since
  pyarrow 13), whereas `pyarrow.fs.S3FileSystem()` built directly ignores them. The URI may also carry
  `?endpoint_override=host:port&scheme=http`. Without a custom endpoint and without `?region=`, `from_uri` asks AWS
  for the bucket's region (one request per `resolve`), whatever `AWS_DEFAULT_REGION` says.
- `AWS_EC2_METADATA_DISABLED=true` stops the SDK from probing the EC2 metadata service for credentials.

Errors (a missing bucket, a refused connection, bad credentials, a missing file) raise `StorageError` with a
one-line message that names the URI and says what to check.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs

from manifests.errors import StorageError

# Filesystems that publish an object only once it is completely written: no temporary name needed.
_ATOMIC_OBJECT_STORES = {"s3", "gcs"}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_WORKERS = 8  # parallel transfers in the tree functions: object stores are latency-bound, not bandwidth-bound
_CHUNK = 8 << 20
CACHE_ENV = "LAYERFLOW_CACHE_DIR"  # the root of the local cache (staging folders, copies of remote datasets)


def is_remote(uri: str) -> bool:
    """True for a `scheme://` URI other than `file://`; a plain path is local."""
    return bool(_SCHEME.match(uri)) and not uri.lower().startswith("file://")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of a URI and the path inside it (`bucket/prefix` for object stores, absolute for local)."""
    target = uri if _SCHEME.match(uri) else os.path.abspath(os.path.expanduser(uri))
    with errors(uri):
        return pafs.FileSystem.from_uri(target)


def cache_root() -> Path:
    """The local cache of this project: `$LAYERFLOW_CACHE_DIR`, else `~/.cache/layerflow-data`."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/layerflow-data").expanduser()


def uri_key(uri: str) -> str:
    """A short folder name for a URI (a hash of it): one local folder per destination or dataset."""
    return hashlib.sha1(uri.encode()).hexdigest()[:16]


def join(uri: str, *parts: str) -> str:
    """`uri` with relative posix parts appended (a query such as `?endpoint_override=` stays at the end)."""
    if not parts:
        return uri
    tail = "/".join(_relative(part) for part in parts)
    if not _SCHEME.match(uri):
        return f"{uri.rstrip('/')}/{tail}" if uri.rstrip("/") else f"/{tail}"
    split = urlsplit(uri)
    return urlunsplit(split._replace(path=f"{split.path.rstrip('/')}/{tail}"))


def exists(uri: str) -> bool:
    """True if the URI is a file or a folder (on an object store: a prefix with at least one object under it)."""
    fs, path = resolve(uri)
    with errors(uri):
        return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str) -> bytes:
    """The whole content of one file."""
    fs, path = resolve(uri)
    with errors(uri, fs, path), fs.open_input_stream(path) as stream:
        return stream.read()


def list_files(uri: str) -> list[str]:
    """Relative posix paths of every file under the prefix, sorted ([] if there is none: an empty or missing prefix)."""
    fs, path = resolve(uri)
    return sorted(file_sizes(fs, path, uri))


def upload_file(local: Path, uri: str) -> None:
    """Copy one local file to the URI; readers see the old object or the whole new one, never a partial file.

    Object stores (S3, GCS) publish an object only when its upload completes, so it is written in place; other
    filesystems get a temporary name in the same folder and a move.
    """
    fs, path = resolve(uri)
    _upload(Path(local), fs, path, uri)


def upload_tree(local_dir: Path, uri: str, only: Iterable[str] | None = None) -> int:
    """Copy every file under `local_dir` (or only the given relative posix paths) to the same paths under the URI.

    Returns the number of files copied. Files are copied in parallel; existing objects are overwritten.
    """
    local_dir = Path(local_dir)
    if only is None:
        if not local_dir.is_dir():
            raise StorageError(f"{local_dir} is not a folder (nothing to upload to {uri})")
        names = sorted(p.relative_to(local_dir).as_posix() for p in local_dir.rglob("*") if p.is_file())
    else:
        names = sorted({_relative(name) for name in only})
    fs, root = resolve(uri)
    _parallel(lambda name: _upload(local_dir.joinpath(*name.split("/")), fs, f"{root}/{name}", join(uri, name)),
              names)
    return len(names)


def download_tree(uri: str, local_dir: Path) -> int:
    """Mirror every file under the prefix into `local_dir` (same relative paths); returns how many were copied.

    A file already present locally with the same size is skipped (so a second call after a complete one copies
    nothing). Each file is written to a temporary name and renamed. Local files absent from the prefix are kept.
    """
    local_dir = Path(local_dir)
    fs, root = resolve(uri)
    sizes = file_sizes(fs, root, uri)
    todo = []
    for name, size in sorted(sizes.items()):
        target = local_dir.joinpath(*_relative(name).split("/"))
        if not (target.is_file() and target.stat().st_size == size):
            todo.append(name)
    _parallel(lambda name: fetch(join(uri, name), local_dir.joinpath(*name.split("/")), (fs, f"{root}/{name}")),
              todo)
    return len(todo)


def fetch(uri: str, local: Path, resolved: tuple[pafs.FileSystem, str] | None = None,
          version: str | None = None) -> Path:
    """Copy one file from the URI to `local` (returned): written to a temporary name in the same folder, then renamed.

    So `local` is whole or absent, never a partial file (a failed copy leaves nothing behind), and processes that
    fetch the same file at once each rename a complete copy. `resolved`: the URI's (filesystem, path) when the caller
    holds them, so that the URI is not resolved again for every file. `version`: the ETag the object was listed with;
    an object the store now serves with another ETag was changed since, and is refused (`StorageError`).
    """
    fs, path = resolved or resolve(uri)
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        with errors(uri, fs, path), fs.open_input_stream(path) as src, tmp.open("wb") as dst:
            served = etag(src.metadata())
            if version and served and served != version:
                raise StorageError(f"{uri}: changed since it was listed (ETag {version} then, {served} now)")
            shutil.copyfileobj(src, dst, _CHUNK)
        os.replace(tmp, local)
    finally:
        tmp.unlink(missing_ok=True)
    return local


@dataclass(frozen=True)
class ObjectInfo:
    """One listed file: its path inside the filesystem (`bucket/key` on an object store), size and version (the
    ETag where the store lists one, as S3 does; else the modification time in ns; "" when neither is known)."""

    path: str
    size: int
    version: str


@dataclass(frozen=True)
class Listing:
    """Every file under a URI (or the URI itself when it names one file), as listed page by page."""

    objects: list[ObjectInfo]
    pages: int  # list requests made (S3: one per page of keys)


def list_objects(uri: str) -> Listing:
    """Every file under the URI with its size and modification time as its version; the URI itself when it is one
    file; [] when it is neither. (pyarrow's listing carries no ETag: S3 sources are listed by `datagen.sources`.)"""
    fs, root = resolve(uri)
    with errors(uri, fs, root):
        info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return Listing([_info(info)], 1)
    found = file_sizes(fs, root, uri)  # refuses a missing bucket
    with errors(uri, fs, root):
        infos = fs.get_file_info([f"{root.rstrip('/')}/{name}" for name in sorted(found)])
    return Listing([_info(info) for info in infos], 1)


def _info(info: pafs.FileInfo) -> ObjectInfo:
    mtime = info.mtime_ns
    return ObjectInfo(info.path, info.size or 0, str(mtime) if mtime is not None else "")


def explain(uri: str, exc: BaseException) -> str:
    """The one-line message of a storage error about `uri` (what to check)."""
    return _explain(uri, exc)


def etag(metadata: dict) -> str:
    """The ETag of an object's metadata (pyarrow's stream metadata, a boto3 head or listing entry), unquoted."""
    value = metadata.get("ETag", metadata.get(b"ETag", ""))
    value = value.decode() if isinstance(value, bytes) else str(value)
    return value.strip('"')


def _relative(name: str) -> str:
    """A relative posix path, refused if it is empty, absolute or escapes its prefix."""
    pure = PurePosixPath(name)
    if not name or not pure.parts or pure.is_absolute() or ".." in pure.parts or "\\" in name:
        raise StorageError(f"path {name!r} is not a relative path inside the prefix (absolute, empty or with '..')")
    return pure.as_posix()


def file_sizes(fs: pafs.FileSystem, root: str, uri: str) -> dict[str, int]:
    """Relative path -> size of every file under `root` (directory markers and folders are left out)."""
    # Not allow_not_found=True: pyarrow would then also answer [] for a bucket that does not exist.
    try:
        with errors(uri):
            infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except StorageError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):  # a missing prefix (a missing bucket is another error)
            return {}
        raise
    prefix = root.rstrip("/") + "/"
    return {info.path[len(prefix):]: info.size for info in infos
            if info.type == pafs.FileType.File and info.path.startswith(prefix)}


def _upload(local: Path, fs: pafs.FileSystem, path: str, uri: str) -> None:
    if not local.is_file():
        raise StorageError(f"{local} is not a file (cannot upload it to {uri})")
    in_place = fs.type_name in _ATOMIC_OBJECT_STORES
    parent, _, name = path.rpartition("/")
    target = path if in_place else f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:12]}"
    with errors(uri):
        if fs.type_name == "local":
            fs.create_dir(parent, recursive=True)
        try:
            with local.open("rb") as src, fs.open_output_stream(target) as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
            if not in_place:
                fs.move(target, path)
        except BaseException:
            if not in_place:
                _delete_quietly(fs, target)
            raise


def _delete_quietly(fs: pafs.FileSystem, path: str) -> None:
    with suppress(OSError):
        fs.delete_file(path)


def _parallel(function: Callable[[str], None], names: list[str]) -> None:
    """Run `function` on every name with a few threads (pyarrow releases the GIL); the first error is raised."""
    if len(names) <= 1:
        for name in names:
            function(name)
        return
    with ThreadPoolExecutor(max_workers=min(_WORKERS, len(names))) as pool:
        for future in [pool.submit(function, name) for name in names]:
            future.result()


def check_bucket(uri: str, fs: pafs.FileSystem, path: str) -> None:
    """Raise the one-line StorageError of a missing bucket: an object store answers "not found" for a missing object
    and for a missing bucket alike, and only the second is worth saying as such."""
    if _bucket_missing(fs, path):
        raise StorageError(_explain(uri, FileNotFoundError(uri), bucket_missing=True))


def _bucket_missing(fs: pafs.FileSystem, path: str) -> bool:
    """On an object store, whether the bucket of `path` does not exist (a missing object does not say which)."""
    if fs.type_name not in _ATOMIC_OBJECT_STORES:
        return False
    try:
        return fs.get_file_info(path.split("/")[0]).type == pafs.FileType.NotFound
    except OSError:
        return False


@contextmanager
def errors(uri: str, fs: pafs.FileSystem | None = None, path: str = "") -> Iterator[None]:
    """Turn pyarrow's OSError / ArrowInvalid into a one-line StorageError naming the URI.

    With `fs` and `path`, a missing file on an object store is told apart from a missing bucket (one more request).
    """
    try:
        yield
    except StorageError:
        raise
    except (OSError, pa.ArrowException) as exc:
        bucket_missing = isinstance(exc, FileNotFoundError) and fs is not None and _bucket_missing(fs, path)
        raise StorageError(_explain(uri, exc, bucket_missing)) from exc


def _explain(uri: str, exc: BaseException, bucket_missing: bool = False) -> str:
    text = " ".join(str(exc).split())
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "the default endpoint"
    if bucket_missing or "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text:
        return f"{uri}: the bucket does not exist (check the bucket name, that it was created, and the endpoint)"
    if "NETWORK_CONNECTION" in text or "Could not connect" in text or "Could not resolve" in text:
        return f"{uri}: cannot reach the storage server at {endpoint} (check AWS_ENDPOINT_URL and the network)"
    if any(word in text for word in ("ACCESS_DENIED", "AccessDenied", "INVALID_ACCESS_KEY", "SIGNATURE_DOES_NOT",
                                     "Forbidden", "credentials")):
        return f"{uri}: access denied (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's permissions)"
    if isinstance(exc, FileNotFoundError) or "does not exist" in text or "NOT_FOUND" in text:
        return f"{uri}: no such file or folder"
    if isinstance(exc, pa.ArrowInvalid) or "Unrecognized filesystem type" in text:
        return f"{uri}: not a usable filesystem URI ({text})"
    return f"{uri}: {text}"


def delete_tree(uri: str) -> None:
    """Delete every file under the prefix (nothing happens if there is none)."""
    fs, path = resolve(uri)
    with errors(uri, fs, path):
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_dir_contents(path, missing_dir_ok=True)
            with suppress(OSError):  # the folder itself (an object store may have had no marker object)
                fs.delete_dir(path)
