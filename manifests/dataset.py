"""One handle on a built dataset wherever it lives (a folder, file://, s3://, gs://, ...): its tables, its summary,
and its files as local paths.

`open_dataset` resolves the URI once. The manifest is read through pyarrow's dataset API with the declared schema,
the split and keep filters pushed down to the Parquet reader. A remote dataset's files are made local in one folder
per dataset, `$LAYERFLOW_CACHE_DIR/datasets/<hash of the URI>`, each fetched once by `storage.fetch`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from manifests import storage, video_io
from manifests.errors import DatasetError
from manifests.io import resolve_media
from manifests.layers import Layer
from manifests.schema import (
    FAILURE_SCHEMA,
    FAILURES_FILE,
    INPUT_SCHEMA,
    INPUTS_FILE,
    KEEP,
    MANIFEST_DIR,
    SAMPLE_SCHEMA,
    SPLIT,
    SUMMARY_FILE,
    media_uri,
)

MIRRORS_DIR = "datasets"  # under the cache root: the local copies of remote datasets
T = TypeVar("T")


@dataclass(frozen=True)
class Dataset:
    """A built dataset: the filesystem it lives on, its root there, and where its files are copied to when that
    filesystem is not the local one."""

    uri: str  # as given (named in messages)
    fs: pafs.FileSystem
    root: str  # the dataset root inside `fs` (absolute for a local folder, `bucket/prefix` for an object store)
    mirror: Path  # the local copy of a remote dataset: its fetched files, and `local_root()`

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def manifest(self, columns: Sequence[str] | None = None, split: str | None = None,
                 keep: bool | None = None) -> pa.Table:
        """The samples, with the declared schema (never one inferred from a file); `columns`: only those; `split`,
        `keep`: only the rows with that value. No part yet is an empty table; a URI with neither `manifest/` nor
        `_summary.json` is a DatasetError."""
        parts = self.part_files()
        if not parts and not self._has(MANIFEST_DIR) and not self._has(SUMMARY_FILE):
            raise DatasetError(f"{self.uri} is not a layerflow dataset (no {MANIFEST_DIR}/ and no {SUMMARY_FILE})")
        paths = [self._locate(name)[1] for name in parts]
        samples = ds.dataset(paths, schema=SAMPLE_SCHEMA, format="parquet", filesystem=self.fs)
        with storage.errors(storage.join(self.uri, MANIFEST_DIR)):
            return samples.to_table(columns=None if columns is None else list(columns), filter=_where(split, keep))

    def part_files(self) -> list[str]:
        """The manifest parts, as paths relative to the root (`manifest/part-<hash>.parquet`), sorted."""
        names = storage.file_sizes(self.fs, self._locate(MANIFEST_DIR)[1], storage.join(self.uri, MANIFEST_DIR))
        return [f"{MANIFEST_DIR}/{name}" for name in sorted(names)
                if "/" not in name and name.startswith("part-") and name.endswith(".parquet")]

    def summary(self) -> dict:
        """`_summary.json`: counts, timings, backends, config, the policy's funnel."""
        text = self.read_text(SUMMARY_FILE)
        if text is None:
            storage.check_bucket(self.uri, self.fs, self.root)
            raise DatasetError(f"{self.uri}: no {SUMMARY_FILE} (was the build interrupted?)")
        return json.loads(text)

    def failures(self) -> pa.Table:
        """Every input or sample that could not be used (empty if the dataset has no failures table)."""
        return self._table(FAILURES_FILE, FAILURE_SCHEMA)

    def inputs(self) -> pa.Table:
        """Every discovered input and its end state (empty if the dataset has no inputs table)."""
        return self._table(INPUTS_FILE, INPUT_SCHEMA)

    def read_text(self, name: str) -> str | None:
        """A small file under the root (`_summary.json`, `policy.toml`), None if there is none."""

        def read(path: str) -> str:
            with self.fs.open_input_stream(path) as stream:
                return stream.read().decode("utf-8")

        return self._if_file(name, read)

    def schema(self, name: str) -> pa.Schema | None:
        """The schema stored in a Parquet file under the root (with its metadata), None if there is no such file."""
        return self._if_file(name, lambda path: pq.read_schema(path, filesystem=self.fs))

    def media(self, relative_uri: str) -> Path:
        """A file of the dataset (a media URI of the manifest) as a local path: a local dataset's own file, which
        may not exist; a remote dataset's copy in `mirror`, fetched on first use (a missing file is a StorageError).
        A path that is absolute or escapes the root is refused (DatasetError)."""
        if self.is_local:
            return resolve_media(Path(self.root), relative_uri)
        local = resolve_media(self.mirror, relative_uri)
        # Fetched once: a media path holds the sample id, a hash of the sample's inputs and build settings, so a copy
        # already here has the same content (`local_root` deletes the copies of files the store no longer has).
        if not local.is_file():
            uri, path = self._locate(relative_uri)
            storage.fetch(uri, local, (self.fs, path))
        return local

    def layers(self, sample_id: str) -> dict[Layer, np.ndarray]:
        """The four layers of a sample decoded from its files (alpha (T, H, W), the others (T, H, W, 3) uint8)."""
        return {layer: video_io.read_layer(self.media(media_uri(sample_id, layer)), layer) for layer in Layer}

    def local_root(self) -> Path:
        """The dataset as a local folder, for code that needs one: a local dataset's own folder; a remote one
        mirrored into `mirror`, fetching only new or changed files and deleting the copies of files the store no
        longer has (a rebuilt dataset's old parts must not be read)."""
        if self.is_local:
            return Path(self.root)
        remote = set(storage.file_sizes(self.fs, self.root, self.uri))
        if self.mirror.is_dir():
            for path in [p for p in self.mirror.rglob("*") if p.is_file()]:
                if path.relative_to(self.mirror).as_posix() not in remote:
                    path.unlink()
        storage.download_tree(self.uri, self.mirror)
        return self.mirror

    def _has(self, name: str) -> bool:
        uri, path = self._locate(name)
        with storage.errors(uri):
            return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _table(self, name: str, schema: pa.Schema) -> pa.Table:
        table = self._if_file(name, lambda path: pq.read_table(path, schema=schema, filesystem=self.fs))
        return schema.empty_table() if table is None else table

    def _if_file(self, name: str, read: Callable[[str], T]) -> T | None:
        """`read(path in fs)` of a file under the root, None if there is no such file; errors are StorageErrors."""
        uri, path = self._locate(name)
        with storage.errors(uri, self.fs, path):
            return read(path) if self.fs.get_file_info(path).type == pafs.FileType.File else None

    def _locate(self, name: str) -> tuple[str, str]:
        """(URI, path in `fs`) of a relative posix path under the root; `storage.join` refuses one that escapes."""
        uri = storage.join(self.uri, name)
        return uri, f"{self.root.rstrip('/')}/{PurePosixPath(name).as_posix()}"


# What the library's dataset functions take: a local path, a pyarrow filesystem URI, or an open handle.
DatasetLike = str | os.PathLike[str] | Dataset


def open_dataset(uri: DatasetLike) -> Dataset:
    """The dataset at a local path or a pyarrow filesystem URI, resolved once (nothing is read yet). A Dataset is
    returned as it is, so that library functions take either a URI or an open handle."""
    if isinstance(uri, Dataset):
        return uri
    text = os.fspath(uri)
    fs, root = storage.resolve(text)
    return Dataset(text, fs, root, storage.cache_root() / MIRRORS_DIR / storage.uri_key(text))


def _where(split: str | None, keep: bool | None) -> ds.Expression | None:
    """The row filter of `Dataset.manifest`: every given value must match."""
    where = None
    for column, value in ((SPLIT, split), (KEEP, keep)):
        if value is not None:
            term = ds.field(column) == value
            where = term if where is None else where & term
    return where
