"""`--out s3://...`: a build published to a local S3 server (moto on 127.0.0.1), read back, validated, resumed after
a kill, and trained on; the same manifest as a local build."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath

import pytest
from s3_server import s3_bucket  # noqa: F401  (fixture: a bucket on the local server, AWS env set)
from test_cli import run_main

from datagen.publish import staging_dir
from filters.audit import validate_dataset
from manifests import io, storage
from manifests.dataset import open_dataset

OPTIONS = ["--frames", "4", "--size", "32x48", "--clip", "none", "--no-ray"]


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LAYERFLOW_CACHE_DIR", str(tmp_path / "cache"))


def manifest_rows(root: Path) -> dict[str, dict]:
    return {row["sample_id"]: row for row in io.read_manifest(root).to_pylist()}


@pytest.mark.slow
def test_build_to_s3_reads_back_validates_and_equals_a_local_build(monkeypatch, capsys, tiny_source, tmp_path,
                                                                   s3_bucket):  # noqa: F811
    uri = f"{s3_bucket}/datasets/tiny"
    code, output = run_main(monkeypatch, capsys, "build", "--source", str(tiny_source), "--out", uri, *OPTIONS)
    assert code == 0, output
    code, output = run_main(monkeypatch, capsys, "build", "--source", str(tiny_source), "--out",
                            str(tmp_path / "local"), *OPTIONS)
    assert code == 0, output

    files = storage.list_files(uri)
    assert "_summary.json" in files and "_build.json" in files and not any(f.startswith("_work/") for f in files)
    summary = json.loads(storage.read_bytes(storage.join(uri, "_summary.json")))
    assert summary["complete"] and summary["out"] == uri and summary["samples"]["total"] == 8
    local = tmp_path / "local"
    expected = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()
                      and not p.name.startswith("_demo"))
    assert sorted(files) == expected  # the same files as a local build ...
    for name in files:  # ... with the same bytes (media, manifest, tables), all but the summary's timings
        if name != "_summary.json":
            assert hashlib.sha256(storage.read_bytes(storage.join(uri, name))).digest() == \
                hashlib.sha256((local / name).read_bytes()).digest(), name

    code, output = run_main(monkeypatch, capsys, "validate", uri)
    assert code in (0, None) and "8 samples" in output and "OK" in output, output
    mirrored = open_dataset(uri).local_root()  # the store mirrored into the cache
    assert manifest_rows(mirrored) == manifest_rows(local) and validate_dataset(mirrored).ok

    strict = tmp_path / "strict.toml"  # `filter` on the URI: decided in the mirror, what changed uploaded
    strict.write_text('[[rule]]\nscore = "recompose_psnr"\nbelow = 1000\n')
    code, output = run_main(monkeypatch, capsys, "filter", uri, "--policy", str(strict))
    assert code in (0, None) and "kept 0 of 8 samples" in output, output
    stored = open_dataset(uri)
    assert not any(stored.manifest(["keep"]).column("keep").to_pylist())
    assert stored.summary()["samples"]["kept"] == 0 and stored.read_text("policy.toml") == strict.read_text()
    assert set(stored.inputs().column("state").to_pylist()) == {"rejected"}


def build_until_the_third_commit(monkeypatch, capsys, source: str, out: str) -> None:
    """A build of `source` into `out` whose process "dies" right after its third commit of samples."""
    from datagen import build as build_module

    real = build_module.BuildFolder.commit_samples
    calls = []

    def die_after_three(self, rows, record):
        path = real(self, rows, record)
        calls.append(path)
        if len(calls) == 3:
            raise RuntimeError("the build died here")
        return path

    monkeypatch.setattr(build_module.BuildFolder, "commit_samples", die_after_three)
    with pytest.raises(RuntimeError, match="died here"):
        run_main(monkeypatch, capsys, "build", "--source", source, "--out", out, *OPTIONS)
    monkeypatch.setattr(build_module.BuildFolder, "commit_samples", real)


@pytest.mark.slow
def test_a_killed_s3_build_resumes_from_what_the_store_holds(monkeypatch, capsys, tiny_source, s3_bucket):  # noqa: F811
    uri = f"{s3_bucket}/ds"
    build_until_the_third_commit(monkeypatch, capsys, str(tiny_source), uri)
    assert len([f for f in storage.list_files(uri) if f.startswith("manifest/")]) == 3
    # another machine: nothing of the staging folder survives, the store alone says what is committed
    import shutil

    shutil.rmtree(staging_dir(uri))
    code, output = run_main(monkeypatch, capsys, "build", "--source", str(tiny_source), "--out", uri, *OPTIONS)
    assert code == 0, output
    summary = json.loads(storage.read_bytes(storage.join(uri, "_summary.json")))
    assert summary["resumed"]["samples_committed_before"] == 3 and summary["samples"]["total"] == 8
    code, output = run_main(monkeypatch, capsys, "validate", uri)
    assert "8 samples" in output and "OK" in output, output


@pytest.mark.slow
def test_train_one_toy_step_from_an_s3_dataset(monkeypatch, capsys, tmp_path, s3_bucket):  # noqa: F811
    from test_layerflow_training import _cli, tiny

    import layerflow_model.config as config_module
    from datagen.demo import make_demo_source
    from layerflow_model.components import MODEL_FILE

    make_demo_source(tmp_path / "src")
    uri = f"{s3_bucket}/demo"
    code, output = run_main(monkeypatch, capsys, "build", "--source", str(tmp_path / "src"), "--out", uri,
                            "--frames", "4", "--size", "32x32", "--clip", "none", "--no-ray")
    assert code == 0, output
    monkeypatch.setitem(config_module.PRESETS, "toy", tiny())
    result = _cli(["train", "--manifest", uri, "--out", str(tmp_path / "run"), "--steps", "1", "--batch-size", "2",
                   "--checkpoint-every", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "checkpoint-0000001" / MODEL_FILE).exists()


@pytest.mark.slow
def test_stages_on_another_node_fetch_decoded_clips_and_media_from_the_store(monkeypatch, capsys, tiny_source,
                                                                             tmp_path, s3_bucket):  # noqa: F811
    """As on a cluster: the input phase ran on "another node" (its decoded clips are not in this staging folder),
    and the scoring stages run where the compose stage's media are not; both come from the store's copies."""
    from datagen import build as build_module
    from datagen import stages

    real_commit = build_module.BuildFolder.commit_input

    def commit_then_forget(self, row):  # the clips stay on the node that decoded them
        real_commit(self, row)
        for path in (row.clip_path, row.background_path):
            if path:
                Path(path).unlink()

    real_compose = stages.ComposeStage.process

    def compose_then_forget(self, row):  # the media stay on the node that composed them
        real_compose(self, row)
        for path in (self.out_dir / "media" / row.sample_id).iterdir():
            path.unlink()

    monkeypatch.setattr(build_module.BuildFolder, "commit_input", commit_then_forget)
    monkeypatch.setattr(stages.ComposeStage, "process", compose_then_forget)
    uri = f"{s3_bucket}/cluster"
    code, output = run_main(monkeypatch, capsys, "build", "--source", str(tiny_source), "--out", uri, *OPTIONS)
    assert code == 0, output
    monkeypatch.setattr(build_module.BuildFolder, "commit_input", real_commit)
    monkeypatch.setattr(stages.ComposeStage, "process", real_compose)
    code, output = run_main(monkeypatch, capsys, "build", "--source", str(tiny_source), "--out",
                            str(tmp_path / "local"), *OPTIONS)
    assert code == 0, output
    assert manifest_rows(open_dataset(uri).local_root()) == manifest_rows(tmp_path / "local")
    assert not any(name.startswith("_work/") for name in storage.list_files(uri))  # the shared clips are cleaned up


def test_a_missing_bucket_is_one_line_from_every_reading_command(monkeypatch, capsys, s3_bucket):  # noqa: F811
    """`StorageError` is a `LayerflowError`: the command line catches it like every error it raises on purpose."""
    missing = s3_bucket.replace("s3://", "s3://no-such-bucket-") + "/ds"
    for command in (["inspect", missing], ["report", missing], ["filter", missing]):
        code, output = run_main(monkeypatch, capsys, *command)
        assert code == 2 and "Traceback" not in output, (command, output)
        [line] = [line for line in output.splitlines() if line.startswith("error:")]
        assert "bucket does not exist" in line, (command, output)
    code, output = run_main(monkeypatch, capsys, "validate", missing)  # validate lists it as the dataset's problem
    assert code == 1 and "Traceback" not in output
    assert "bucket does not exist" in " ".join(output.split()), output


# `--source` on object storage ----------------------------------------------------------------------------------

# What may differ between two builds of the same files from different places: where each input was read from.
SOURCE_COLUMNS = {"source_foreground", "source_background", "layers_source", "source_companions"}


def upload_source(local: Path, uri: str) -> str:
    storage.upload_tree(local, uri)
    return uri


def media_digests(root: Path, sample_id: str) -> dict[str, str]:
    folder = root / "media" / sample_id
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_the_same_files_from_two_folders_and_from_s3_make_the_same_samples(monkeypatch, capsys, tiny_source, tmp_path,
                                                                           s3_bucket):  # noqa: F811
    import shutil

    sources = {"here": str(tiny_source), "there": str(shutil.copytree(tiny_source, tmp_path / "else" / "where")),
               "s3": upload_source(tiny_source, f"{s3_bucket}/sources/tiny")}
    rows = {}
    for name, source in sources.items():
        code, output = run_main(monkeypatch, capsys, "build", "--source", source, "--out", str(tmp_path / name),
                                *OPTIONS)
        assert code == 0, output
        rows[name] = manifest_rows(tmp_path / name)
    kinds = {name: sorted((row["kind"], sample_id) for sample_id, row in rows[name].items()) for name in sources}
    assert len(rows["here"]) >= 6 and kinds["here"] == kinds["there"] == kinds["s3"], {n: len(k) for n, k in
                                                                                       kinds.items()}
    for sample_id, row in rows["here"].items():
        same = [{k: v for k, v in rows[name][sample_id].items() if k not in SOURCE_COLUMNS} for name in sources]
        assert same[0] == same[1] == same[2], sample_id
        assert rows["s3"][sample_id]["source_foreground"].startswith(f"{s3_bucket}/sources/tiny/")
        assert row["source_foreground"].startswith(str(tiny_source))
        digests = [media_digests(tmp_path / name, sample_id) for name in sources]
        assert digests[0] and digests[0] == digests[1] == digests[2], sample_id
    inputs = {name: {r["input_id"]: r for r in io.read_inputs(tmp_path / name).to_pylist()} for name in sources}
    assert inputs["here"].keys() == inputs["s3"].keys()
    # one object: its ETag; a folder (frames, a layered folder): a hash of its members' ETags
    for row in inputs["s3"].values():
        single = PurePosixPath(row["uri"]).suffix != ""
        assert row["source_version"].split(":")[0] == ("etag" if single else "sha1"), row
    summary = json.loads((tmp_path / "s3" / "_summary.json").read_text())
    assert summary["listing"]["objects"] == len(storage.list_files(sources["s3"])) and summary["listing"]["pages"] >= 1


def test_an_s3_listing_is_paginated_with_etags_and_sizes(tiny_source, s3_bucket):  # noqa: F811
    from s3_server import s3_client

    from datagen.sources import list_source

    uri = upload_source(tiny_source, f"{s3_bucket}/src")
    local = sorted(p for p in tiny_source.rglob("*") if p.is_file())
    listing, etags = list_source(uri, page_size=3)
    assert etags and len(listing.objects) == len(local) and listing.pages == -(-len(local) // 3)
    for info, path in zip(listing.objects, local):
        assert info.path.endswith(path.relative_to(tiny_source).as_posix()) and info.size == path.stat().st_size
        key = info.path.split("/", 1)[1]
        assert info.version == s3_client().head_object(Bucket=s3_bucket[5:], Key=key)["ETag"].strip('"')
    [one] = list_source(f"{uri}/fg_a.mp4")[0].objects  # a URI naming one object
    assert one.size == (tiny_source / "fg_a.mp4").stat().st_size


def test_list_files_on_s3_name_inputs_on_s3(tiny_source, s3_bucket):  # noqa: F811
    from datagen.sources import discover

    uri = upload_source(tiny_source, f"{s3_bucket}/src")
    storage_list = f"{s3_bucket}/lists/clips.csv"
    (tiny_source.parent / "clips.csv").write_text(f"uri,group\n{uri}/fg_a.mp4,g1\n{uri}/plates/bg_c.mp4,\n")
    storage.upload_file(tiny_source.parent / "clips.csv", storage_list)
    items = {item.relative: item for item in discover(storage_list)}
    assert sorted(items) == ["fg_a.mp4", "plates/bg_c.mp4"] and items["fg_a.mp4"].group == "g1"
    assert items["plates/bg_c.mp4"].caption_background == "a wall"  # its sidecar, fetched with the listing
    (tiny_source.parent / "local.txt").write_text(f"{tiny_source / 'fg_a.mp4'}\n{tiny_source / 'plates/bg_c.mp4'}\n")
    local = {item.relative: item.input_id for item in discover(str(tiny_source.parent / "local.txt"))}
    assert local == {relative: item.input_id for relative, item in items.items()}


@pytest.mark.slow
def test_a_build_from_s3_resumes_after_a_kill(monkeypatch, capsys, tiny_source, tmp_path, s3_bucket):  # noqa: F811
    source = upload_source(tiny_source, f"{s3_bucket}/src")
    build_until_the_third_commit(monkeypatch, capsys, source, str(tmp_path / "ds"))
    code, output = run_main(monkeypatch, capsys, "build", "--source", source, "--out", str(tmp_path / "ds"), *OPTIONS)
    assert code == 0, output
    summary = json.loads((tmp_path / "ds" / "_summary.json").read_text())
    assert summary["resumed"]["samples_committed_before"] == 3 and summary["resumed"]["inputs_committed_before"] == 6
    assert summary["samples"]["total"] == len(manifest_rows(tmp_path / "ds")) > 3


@pytest.mark.slow
def test_a_changed_object_refuses_the_resume_and_a_vanished_one_fails_alone(monkeypatch, capsys, tiny_source,
                                                                           tmp_path, s3_bucket):  # noqa: F811
    from s3_server import s3_client

    from datagen import decode as decode_module

    source = upload_source(tiny_source, f"{s3_bucket}/src")
    bucket = s3_bucket.removeprefix("s3://")
    real = decode_module.localise

    def vanish_first(item, folder):  # the object is deleted between the listing and the worker's fetch
        if item.uri.endswith("fg_b.mp4"):
            s3_client().delete_object(Bucket=bucket, Key="src/fg_b.mp4")
        return real(item, folder)

    monkeypatch.setattr(decode_module, "localise", vanish_first)
    out = tmp_path / "ds"
    code, output = run_main(monkeypatch, capsys, "build", "--source", source, "--out", str(out), *OPTIONS)
    assert code == 0, output
    [failure] = [f for f in io.read_failures(out).to_pylist() if f["uri"].endswith("fg_b.mp4")]
    assert failure["stage"] == "decode" and "no such file" in failure["message"] and "\n" not in failure["message"]
    states = {Path(r["uri"]).name: r["state"] for r in io.read_inputs(out).to_pylist()}
    assert states["fg_b.mp4"] == "failed" and states["fg_a.mp4"] == "used"

    monkeypatch.setattr(decode_module, "localise", real)
    storage.upload_file(tiny_source / "fg_b.mp4", f"{source}/fg_b.mp4")  # listed again: the same size ...
    data = bytearray((tiny_source / "fg_a.mp4").read_bytes())
    data[-1] ^= 0xFF  # ... and fg_a changed in place, its size unchanged: only its ETag tells
    s3_client().put_object(Bucket=bucket, Key="src/fg_a.mp4", Body=bytes(data))
    code, output = run_main(monkeypatch, capsys, "build", "--source", source, "--out", str(out), *OPTIONS)
    assert code == 2 and "an input changed since" in " ".join(output.split()), output
