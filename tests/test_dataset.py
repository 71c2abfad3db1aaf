"""The dataset handle (`manifests.dataset`): one reader of a built dataset, local or on a local S3 server (moto)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem
from pyarrow.fs import FSSpecHandler, PyFileSystem
from s3_server import s3_bucket, s3_client  # noqa: F401  (fixture: a bucket on the local server, AWS env set)

from datagen.build import build
from datagen.pipeline import LocalRunner
from filters.audit import validate_dataset
from manifests import io, storage
from manifests.dataset import Dataset, open_dataset
from manifests.errors import DatasetError, StorageError
from manifests.inspect import inspect_dataset
from manifests.layers import Layer
from manifests.schema import MANIFEST_DIR, SAMPLE_SCHEMA, media_uri

UNSAFE = ["/etc/passwd", "../outside.mp4", "media/../../x.mp4", "", "media\\x.mp4"]


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LAYERFLOW_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def built(tiny_source, small_config, tmp_path) -> Path:
    """The tiny source built to a local folder (6 samples: 4 train, 2 val), with one sample rejected."""
    out = tmp_path / "ds"
    build(str(tiny_source), out, replace(small_config, clip="none"), LocalRunner(progress=False))
    part = sorted((out / MANIFEST_DIR).glob("part-*.parquet"))[0]
    rows = pq.read_table(part, schema=SAMPLE_SCHEMA).to_pylist()
    rows[0].update(keep=False, reject_reasons=["test_rule"])
    io.write_parquet_atomic(io.to_table(rows, SAMPLE_SCHEMA), part)
    return out


@pytest.fixture
def remote(built, s3_bucket) -> str:  # noqa: F811
    """The same dataset, copied to the local S3 server."""
    uri = f"{s3_bucket}/datasets/tiny"
    storage.upload_tree(built, uri)
    return uri


def sample_ids(table) -> list[str]:
    return sorted(table.column("sample_id").to_pylist())


def test_manifest_filters_split_keep_and_columns(built):
    dataset = open_dataset(built)
    rows = io.read_manifest(built).to_pylist()
    assert sample_ids(dataset.manifest()) == sorted(row["sample_id"] for row in rows)
    assert sample_ids(dataset.manifest(split="val")) == sorted(r["sample_id"] for r in rows if r["split"] == "val")
    kept = sorted(r["sample_id"] for r in rows if r["keep"])
    assert len(kept) == len(rows) - 1 and sample_ids(dataset.manifest(keep=True)) == kept
    [rejected] = [r for r in rows if not r["keep"]]
    other = "val" if rejected["split"] == "train" else "train"
    assert sample_ids(dataset.manifest(split=rejected["split"], keep=False)) == [rejected["sample_id"]]
    assert dataset.manifest(split=other, keep=False).num_rows == 0
    narrow = dataset.manifest(columns=["sample_id", "num_frames"], keep=True)
    assert narrow.schema.names == ["sample_id", "num_frames"]
    assert narrow.schema.field("num_frames").type == SAMPLE_SCHEMA.field("num_frames").type


def test_a_dataset_with_no_parts_yet_is_an_empty_table_of_the_declared_schema(tmp_path):
    (tmp_path / "_summary.json").write_text("{}")
    table = open_dataset(tmp_path).manifest()
    assert table.num_rows == 0 and table.schema.equals(SAMPLE_SCHEMA)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_missing_dataset_is_one_line_saying_it_is_not_a_layerflow_dataset(where, request, tmp_path):
    uri = str(tmp_path / "nothing") if where == "local" else f"{request.getfixturevalue('s3_bucket')}/nothing"
    with pytest.raises(DatasetError, match="is not a layerflow dataset") as caught:
        open_dataset(uri).manifest()
    assert "\n" not in str(caught.value) and uri in str(caught.value)


def test_a_missing_bucket_is_one_line_saying_so(s3_bucket):  # noqa: F811
    with pytest.raises(StorageError, match="bucket does not exist") as caught:
        open_dataset("s3://no-such-bucket-layerflow/ds").manifest()
    assert "\n" not in str(caught.value)


def test_local_media_are_the_files_in_place(built):
    dataset = open_dataset(built)
    sample_id = io.read_manifest(built).column("sample_id")[0].as_py()
    assert dataset.media(media_uri(sample_id, Layer.ALPHA)) == built / "media" / sample_id / "alpha.mkv"
    layers = dataset.layers(sample_id)
    expected = io.read_layers(built, sample_id)
    assert all(np.array_equal(layers[layer], expected[layer]) for layer in Layer)
    assert not (storage.cache_root() / "datasets").exists()  # nothing was copied


@pytest.mark.parametrize("where", ["local", "s3"])
@pytest.mark.parametrize("bad", UNSAFE)
def test_media_paths_that_escape_the_root_are_refused(where, bad, request, tmp_path):
    uri = str(tmp_path) if where == "local" else f"{request.getfixturevalue('s3_bucket')}/ds"
    dataset = open_dataset(uri)
    with pytest.raises(DatasetError, match="not a relative path inside the dataset"):
        dataset.media(bad)
    assert not dataset.mirror.exists()


def test_remote_tables_equal_the_local_ones(built, remote):
    local, dataset = open_dataset(built), open_dataset(remote)
    assert not dataset.is_local
    for query in ({}, {"split": "val"}, {"keep": True}, {"columns": ["sample_id", "kind"], "split": "train"}):
        assert dataset.manifest(**query).sort_by("sample_id").equals(local.manifest(**query).sort_by("sample_id"))
    assert dataset.summary() == local.summary()
    assert dataset.failures().equals(local.failures()) and dataset.inputs().equals(local.inputs())
    assert dataset.inputs().num_rows > 0


def test_remote_media_are_fetched_once_into_the_cache(built, remote, monkeypatch):
    fetched = []
    real_fetch = storage.fetch

    def counting_fetch(uri, local, resolved=None):
        fetched.append(uri)
        return real_fetch(uri, local, resolved)

    monkeypatch.setattr(storage, "fetch", counting_fetch)
    dataset = open_dataset(remote)
    sample_id = io.read_manifest(built).column("sample_id")[0].as_py()
    layers = dataset.layers(sample_id)
    assert sorted(fetched) == sorted(storage.join(remote, media_uri(sample_id, layer)) for layer in Layer)
    assert dataset.layers(sample_id).keys() == layers.keys() and len(fetched) == 4  # the second time: no fetch
    assert open_dataset(remote).media(media_uri(sample_id, Layer.BLENDED)).is_file() and len(fetched) == 4
    expected = io.read_layers(built, sample_id)
    assert all(np.array_equal(layers[layer], expected[layer]) for layer in Layer)
    copies = [p for p in dataset.mirror.rglob("*") if p.is_file()]
    assert sorted(p.relative_to(dataset.mirror).as_posix() for p in copies) == sorted(
        media_uri(sample_id, layer) for layer in Layer)  # and no temporary file


class _DropsMidway:
    """A read stream that serves half the file, then fails like a dropped connection."""

    closed = False

    def __init__(self, data: bytes) -> None:
        self.data, self.served = data, False

    def read(self, size: int = -1) -> bytes:
        if self.served:
            raise ConnectionResetError("connection reset by peer")
        self.served = True
        return self.data[:len(self.data) // 2]

    def close(self) -> None:
        self.closed = True


class _FlakyFileSystem(LocalFileSystem):
    def open(self, path, mode="rb", **kwargs):
        with super().open(path, mode, **kwargs) as stream:
            return _DropsMidway(stream.read())


def test_a_failed_fetch_leaves_no_partial_file(tmp_path):
    name = "media/abc/alpha.mkv"
    (tmp_path / "store" / "media" / "abc").mkdir(parents=True)
    (tmp_path / "store" / name).write_bytes(bytes(range(256)) * 64)
    flaky = Dataset("flaky://store", PyFileSystem(FSSpecHandler(_FlakyFileSystem())), str(tmp_path / "store"),
                    tmp_path / "mirror")
    with pytest.raises(StorageError, match="connection reset") as caught:
        flaky.media(name)
    assert "\n" not in str(caught.value)
    assert not [p for p in (tmp_path / "mirror").rglob("*") if p.is_file()]  # neither the file nor a temporary one
    healthy = replace(flaky, fs=PyFileSystem(FSSpecHandler(LocalFileSystem())))
    assert healthy.media(name).read_bytes() == (tmp_path / "store" / name).read_bytes()


def test_local_root_mirrors_a_remote_dataset_and_drops_files_the_store_no_longer_has(built, remote):
    dataset = open_dataset(remote)
    assert open_dataset(built).local_root() == built
    mirror = dataset.local_root()
    assert mirror == dataset.mirror
    assert storage.list_files(remote) == sorted(p.relative_to(mirror).as_posix() for p in mirror.rglob("*")
                                                if p.is_file())
    (mirror / MANIFEST_DIR / "part-old.parquet").write_bytes(b"a rebuilt dataset's old part")
    assert dataset.local_root() == mirror and not (mirror / MANIFEST_DIR / "part-old.parquet").exists()
    assert sample_ids(io.read_manifest(mirror)) == sample_ids(io.read_manifest(built))


def test_validate_and_inspect_an_s3_dataset_through_the_handle(tiny_source, small_config, s3_bucket):  # noqa: F811
    uri = f"{s3_bucket}/built"
    build(str(tiny_source), uri, replace(small_config, clip="none"), LocalRunner(progress=False))
    report = validate_dataset(uri)
    assert report.ok, report.problems
    assert (report.samples, report.files) == (8, 34)  # 4 files a sample, and a decomposed one's invented mask
    info = inspect_dataset(uri)
    assert info["root"] == uri and info["inputs"] == {"used": 6}
    assert info["by_kind"] == {"video_copy_paste": 4, "image_frozen": 2, "video_decomposed": 2}
    assert len(info["examples"]) == 3
    mirror = open_dataset(uri).mirror  # only the media were fetched: the tables were read from the store
    assert {p.relative_to(mirror).parts[0] for p in mirror.rglob("*") if p.is_file()} == {"media"}


def test_validate_reports_a_remote_media_file_that_is_missing(built, remote):
    sample_id = io.read_manifest(built).column("sample_id")[0].as_py()
    bucket, _, prefix = remote.removeprefix("s3://").partition("/")
    s3_client().delete_object(Bucket=bucket, Key=f"{prefix}/{media_uri(sample_id, Layer.ALPHA)}")
    report = validate_dataset(remote)
    assert [p for p in report.problems if sample_id in p] == [
        f"sample {sample_id}: {storage.join(remote, media_uri(sample_id, Layer.ALPHA))}: no such file or folder"]
