"""manifests.storage against a local S3 server (moto) and a local folder: one code path serves both."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from s3_server import s3_bucket, s3_client, s3_server  # noqa: F401  (fixtures: local S3 server, fresh bucket)

from manifests import storage
from manifests.storage import StorageError

ROOT = Path(__file__).resolve().parents[1]
TABLE = pa.table({"sample_id": ["a", "b", "c"], "num_frames": pa.array([8, 16, 24], pa.int32())})


def write_tree(folder: Path) -> dict[str, bytes]:
    """A small dataset-like tree with nested folders and a Parquet file; returns relative path -> content."""
    (folder / "manifest").mkdir(parents=True)
    pq.write_table(TABLE, folder / "manifest" / "part-0123.parquet")
    files = {
        "_summary.json": json.dumps({"samples": 3}).encode(),
        "media/a/alpha.mkv": bytes(range(256)) * 40,
        "media/a/deep/nested/blended.mp4": b"\x00\x01" * 3000,
        "media/b/foreground.mp4": b"",  # an empty file is a file too
    }
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    files["manifest/part-0123.parquet"] = (folder / "manifest" / "part-0123.parquet").read_bytes()
    return files


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(params=["s3", "local"])
def target(request, tmp_path) -> str:
    """A dataset prefix on the local S3 server or in a local folder."""
    if request.param == "s3":
        return storage.join(request.getfixturevalue("s3_bucket"), "datasets", "ds1")
    return str(tmp_path / "remote" / "ds1")


def test_round_trip(target, tmp_path):
    files = write_tree(tmp_path / "src")
    assert storage.list_files(target) == []
    assert not storage.exists(target)

    assert storage.upload_tree(tmp_path / "src", target) == len(files)
    assert storage.list_files(target) == sorted(files)
    assert storage.exists(target) and storage.exists(storage.join(target, "media/a"))
    assert storage.exists(storage.join(target, "media", "a", "alpha.mkv"))
    assert not storage.exists(storage.join(target, "media/a/missing.mkv"))
    for name, content in files.items():
        assert storage.read_bytes(storage.join(target, name)) == content

    fs, path = storage.resolve(storage.join(target, "manifest/part-0123.parquet"))
    assert pq.read_table(path, filesystem=fs).equals(TABLE)

    copy = tmp_path / "copy"
    assert storage.download_tree(target, copy) == len(files)
    assert local_files(copy) == files
    assert storage.download_tree(target, copy) == 0  # unchanged files are skipped

    (tmp_path / "new.json").write_bytes(b'{"samples": 4, "more": true}')
    storage.upload_file(tmp_path / "new.json", storage.join(target, "_summary.json"))
    assert storage.download_tree(target, copy) == 1
    assert (copy / "_summary.json").read_bytes() == b'{"samples": 4, "more": true}'
    assert not [p for p in copy.rglob("*") if ".tmp-" in p.name]


def test_download_skips_only_same_size(s3_bucket, tmp_path):  # noqa: F811
    (tmp_path / "src").mkdir()
    for name in ("one.bin", "two.bin"):
        (tmp_path / "src" / name).write_bytes(b"x" * 10)
    storage.upload_tree(tmp_path / "src", s3_bucket)
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "one.bin").write_bytes(b"y" * 10)  # same size: trusted as the same file
    (tmp_path / "dst" / "two.bin").write_bytes(b"y" * 3)  # truncated: copied again
    assert storage.download_tree(s3_bucket, tmp_path / "dst") == 1
    assert (tmp_path / "dst" / "one.bin").read_bytes() == b"y" * 10
    assert (tmp_path / "dst" / "two.bin").read_bytes() == b"x" * 10


def test_objects_are_exactly_the_files(s3_bucket, tmp_path):  # noqa: F811
    """No temporary objects and no directory markers are left in the bucket; markers made by others are no files."""
    files = write_tree(tmp_path / "src")
    storage.upload_tree(tmp_path / "src", storage.join(s3_bucket, "pre"))
    storage.upload_file(tmp_path / "src" / "_summary.json", storage.join(s3_bucket, "pre/_summary.json"))
    listing = s3_client().list_objects_v2(Bucket=s3_bucket.removeprefix("s3://"))
    assert sorted(obj["Key"] for obj in listing["Contents"]) == sorted(f"pre/{name}" for name in files)
    s3_client().put_object(Bucket=s3_bucket.removeprefix("s3://"), Key="pre/empty/", Body=b"")  # a folder marker
    assert storage.list_files(storage.join(s3_bucket, "pre")) == sorted(files)


def test_upload_tree_only(target, tmp_path):
    write_tree(tmp_path / "src")
    only = ["media/a/alpha.mkv", "_summary.json", "media/a/alpha.mkv"]
    assert storage.upload_tree(tmp_path / "src", target, only=only) == 2
    assert storage.list_files(target) == ["_summary.json", "media/a/alpha.mkv"]
    with pytest.raises(StorageError, match="not a file"):
        storage.upload_tree(tmp_path / "src", target, only=["media/missing.mp4"])
    with pytest.raises(StorageError, match="not a folder"):
        storage.upload_tree(tmp_path / "nothing", target)


def test_upload_file_replaces_without_temporary_files(tmp_path):
    source = tmp_path / "a.txt"
    source.write_text("first")
    dest = storage.join(str(tmp_path / "out"), "deep/a.txt")
    storage.upload_file(source, dest)
    source.write_text("second, longer")
    storage.upload_file(source, dest)
    assert storage.read_bytes(dest) == b"second, longer"
    assert storage.list_files(str(tmp_path / "out")) == ["deep/a.txt"]
    with pytest.raises(StorageError, match="not a file"):
        storage.upload_file(tmp_path / "missing.txt", dest)


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "", ".", "a\\b"])
def test_paths_escaping_the_prefix_are_refused(bad, s3_bucket, tmp_path):  # noqa: F811
    with pytest.raises(StorageError, match="not a relative path"):
        storage.join(s3_bucket, bad)
    with pytest.raises(StorageError, match="not a relative path"):
        storage.join("a", "ok", bad)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "ok.txt").write_text("ok")
    with pytest.raises(StorageError, match="not a relative path"):
        storage.upload_tree(tmp_path / "src", s3_bucket, only=["ok.txt", bad])
    assert storage.list_files(s3_bucket) == []  # refused before anything was copied


def test_download_refuses_keys_that_escape(s3_bucket, tmp_path):  # noqa: F811
    """A key such as `pre/../evil` (legal in S3) must not write outside the local folder."""
    s3_client().put_object(Bucket=s3_bucket.removeprefix("s3://"), Key="pre/../evil", Body=b"x")
    with pytest.raises(StorageError, match="not a relative path"):
        storage.download_tree(storage.join(s3_bucket, "pre"), tmp_path / "dst" / "inner")
    assert not list(tmp_path.rglob("evil"))


def test_join():
    assert storage.join("s3://bkt") == "s3://bkt"
    assert storage.join("s3://bkt", "a", "b/c.txt") == "s3://bkt/a/b/c.txt"
    assert storage.join("s3://bkt/pre/", "a") == "s3://bkt/pre/a"
    assert storage.join("s3://bkt/pre?endpoint_override=h:9&scheme=http", "a/b") == (
        "s3://bkt/pre/a/b?endpoint_override=h:9&scheme=http")
    assert storage.join("file:///tmp/x", "a") == "file:///tmp/x/a"
    assert storage.join("/data/ds/", "media", "s/alpha.mkv") == "/data/ds/media/s/alpha.mkv"
    assert storage.join("/", "a") == "/a"
    assert storage.join("rel", "./a//b") == "rel/a/b"


def test_is_remote_and_resolve(s3_bucket, tmp_path, monkeypatch):  # noqa: F811
    assert storage.is_remote("s3://bkt/x") and storage.is_remote("gs://bkt") and storage.is_remote("S3://b")
    assert not storage.is_remote("file:///tmp/x") and not storage.is_remote("/tmp/x")
    assert not storage.is_remote("relative/x") and not storage.is_remote("s3:/almost")

    fs, path = storage.resolve(f"{s3_bucket}/pre/")
    assert fs.type_name == "s3" and path == f"{s3_bucket.removeprefix('s3://')}/pre"
    fs, path = storage.resolve(s3_bucket)
    assert path == s3_bucket.removeprefix("s3://")
    monkeypatch.chdir(tmp_path)
    fs, path = storage.resolve("out/ds")
    assert fs.type_name == "local" and path == (tmp_path / "out" / "ds").as_posix()
    assert storage.resolve(f"file://{tmp_path}/x")[1] == (tmp_path / "x").as_posix()
    with pytest.raises(StorageError, match="nosuchscheme://x"):
        storage.resolve("nosuchscheme://x/y")


def test_missing_bucket_is_a_one_line_storage_error(s3_bucket, tmp_path):  # noqa: F811
    missing = "s3://no-such-bucket-layerflow/pre"
    assert not storage.exists(missing)
    for call in (lambda: storage.list_files(missing), lambda: storage.download_tree(missing, tmp_path),
                 lambda: storage.read_bytes(storage.join(missing, "a.txt")),
                 lambda: storage.upload_file(Path(__file__), storage.join(missing, "a.txt"))):
        with pytest.raises(StorageError) as caught:
            call()
        message = str(caught.value)
        assert "\n" not in message and "no-such-bucket-layerflow" in message and "bucket does not exist" in message


def test_missing_file_is_a_storage_error(target):
    with pytest.raises(StorageError, match="no such file") as caught:
        storage.read_bytes(storage.join(target, "missing.json"))
    assert "\n" not in str(caught.value) and "missing.json" in str(caught.value)


def test_refused_connection_is_a_storage_error(s3_bucket, monkeypatch):  # noqa: F811
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(StorageError, match="cannot reach the storage server") as caught:
        storage.list_files(storage.join(s3_bucket, "pre"))
    assert "\n" not in str(caught.value) and f"127.0.0.1:{port}" in str(caught.value)


def test_endpoint_from_the_uri_or_the_s3_variable(s3_bucket, s3_server, tmp_path, monkeypatch):  # noqa: F811
    (tmp_path / "a.txt").write_bytes(b"hello")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    host_port = s3_server.removeprefix("http://")
    uri = f"{s3_bucket}/pre?endpoint_override={host_port}&scheme=http"
    storage.upload_file(tmp_path / "a.txt", storage.join(uri, "a.txt"))
    assert storage.list_files(uri) == ["a.txt"]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    assert storage.read_bytes(f"{s3_bucket}/pre/a.txt") == b"hello"


def test_a_subprocess_reaches_the_server(s3_bucket, tmp_path):  # noqa: F811
    (tmp_path / "a.txt").write_bytes(b"hello")
    storage.upload_file(tmp_path / "a.txt", storage.join(s3_bucket, "sub/a.txt"))
    code = f"from manifests import storage; print(storage.list_files({s3_bucket!r}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['sub/a.txt']"
