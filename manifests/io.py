"""Write and read a dataset's tables: atomic, deterministically named part files; safe relative media paths."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from manifests import video_io
from manifests.errors import DatasetError
from manifests.layers import Layer
from manifests.schema import (
    FAILURE_SCHEMA,
    FAILURES_FILE,
    INPUT_SCHEMA,
    INPUTS_FILE,
    MANIFEST_DIR,
    SAMPLE_ID,
    SAMPLE_SCHEMA,
    SUMMARY_FILE,
    media_uri,
    to_table,
)


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write to a temporary name in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_text_atomic(text: str, path: Path) -> None:
    """Write to a temporary name in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(data: dict, path: Path) -> None:
    write_text_atomic(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", path)


def manifest_part_name(rows: list[dict]) -> str:
    """`part-<hash of the sorted sample ids>.parquet`: the same rows give the same name."""
    ids = sorted(row[SAMPLE_ID] for row in rows)
    return f"part-{hashlib.sha1(chr(10).join(ids).encode()).hexdigest()[:16]}.parquet"


def write_manifest_part(root: Path, rows: list[dict]) -> Path:
    """One part of the manifest, named by the hash of its sample ids, written by rename (all or nothing)."""
    path = root / MANIFEST_DIR / manifest_part_name(rows)
    write_parquet_atomic(to_table(sorted(rows, key=lambda r: r[SAMPLE_ID]), SAMPLE_SCHEMA), path)
    return path


def write_failures(root: Path, rows: list[dict]) -> None:
    write_parquet_atomic(to_table(rows, FAILURE_SCHEMA), root / FAILURES_FILE)


def write_inputs(root: Path, rows: list[dict]) -> None:
    write_parquet_atomic(to_table(rows, INPUT_SCHEMA), root / INPUTS_FILE)


def read_manifest(root: Path, columns: list[str] | None = None) -> pa.Table:
    """All samples, with the declared schema (not one inferred from the first file); `columns`: only those."""
    if not (Path(root) / MANIFEST_DIR).is_dir() and not (Path(root) / SUMMARY_FILE).exists():
        raise DatasetError(f"{root} is not a layerflow dataset (no {MANIFEST_DIR}/ and no {SUMMARY_FILE})")
    return read_parts(root, columns)


def read_parts(root: Path, columns: list[str] | None = None) -> pa.Table:
    """The samples in the manifest parts on disk (none yet is an empty table): also a build's, while it runs."""
    folder = Path(root) / MANIFEST_DIR
    files = sorted(str(p) for p in folder.glob("part-*.parquet")) if folder.is_dir() else []
    if not files:
        return SAMPLE_SCHEMA.empty_table().select(columns) if columns else SAMPLE_SCHEMA.empty_table()
    return ds.dataset(files, schema=SAMPLE_SCHEMA, format="parquet").to_table(columns=columns)


def read_part(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One manifest part with the declared schema (a column a part of an older schema lacks reads as null);
    `columns`: only those are read from the file."""
    return ds.dataset([str(path)], schema=SAMPLE_SCHEMA, format="parquet").to_table(columns=columns)


def read_failures(root: Path) -> pa.Table:
    path = Path(root) / FAILURES_FILE
    return pq.read_table(path, schema=FAILURE_SCHEMA) if path.exists() else FAILURE_SCHEMA.empty_table()


def read_inputs(root: Path) -> pa.Table:
    path = Path(root) / INPUTS_FILE
    return pq.read_table(path, schema=INPUT_SCHEMA) if path.exists() else INPUT_SCHEMA.empty_table()


def read_summary(root: Path) -> dict:
    path = Path(root) / SUMMARY_FILE
    if not path.exists():
        raise DatasetError(f"{root}: no {SUMMARY_FILE} (was the build interrupted?)")
    return json.loads(path.read_text(encoding="utf-8"))


def resolve_media(root: Path, uri: str) -> Path:
    """A media path from the manifest, refused if it is absolute or escapes the dataset root."""
    pure = PurePosixPath(uri)
    if pure.is_absolute() or ".." in pure.parts or "\\" in uri or not uri:
        raise DatasetError(f"media path {uri!r} is not a relative path inside the dataset")
    return Path(root).joinpath(*pure.parts)


def read_layers(root: Path, sample_id: str) -> dict[Layer, np.ndarray]:
    """The four layers of a sample decoded from its files (alpha (T, H, W), the others (T, H, W, 3) uint8)."""
    return {layer: video_io.read_layer(resolve_media(root, media_uri(sample_id, layer)), layer) for layer in Layer}
