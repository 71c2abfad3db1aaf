"""`--out s3://...`: a build published to a local S3 server (moto on 127.0.0.1), read back, validated, resumed after
a kill, and trained on; the same manifest as a local build."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

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
    assert summary["complete"] and summary["out"] == uri and summary["samples"]["total"] == 6
    local = tmp_path / "local"
    expected = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()
                      and not p.name.startswith("_demo"))
    assert sorted(files) == expected  # the same files as a local build ...
    for name in files:  # ... with the same bytes (media, manifest, tables), all but the summary's timings
        if name != "_summary.json":
            assert hashlib.sha256(storage.read_bytes(storage.join(uri, name))).digest() == \
                hashlib.sha256((local / name).read_bytes()).digest(), name

    code, output = run_main(monkeypatch, capsys, "validate", uri)
    assert code in (0, None) and "6 samples" in output and "OK" in output, output
    mirrored = open_dataset(uri).local_root()  # the store mirrored into the cache
    assert manifest_rows(mirrored) == manifest_rows(local) and validate_dataset(mirrored).ok

    strict = tmp_path / "strict.toml"  # `filter` on the URI: decided in the mirror, what changed uploaded
    strict.write_text('[[rule]]\nscore = "recompose_psnr"\nbelow = 1000\n')
    code, output = run_main(monkeypatch, capsys, "filter", uri, "--policy", str(strict))
    assert code in (0, None) and "kept 0 of 6 samples" in output, output
    stored = open_dataset(uri)
    assert not any(stored.manifest(["keep"]).column("keep").to_pylist())
    assert stored.summary()["samples"]["kept"] == 0 and stored.read_text("policy.toml") == strict.read_text()
    assert set(stored.inputs().column("state").to_pylist()) == {"rejected"}


@pytest.mark.slow
def test_a_killed_s3_build_resumes_from_what_the_store_holds(monkeypatch, capsys, tiny_source, s3_bucket):  # noqa: F811
    uri = f"{s3_bucket}/ds"
    from datagen import build as build_module

    real = build_module.BuildFolder.commit_samples
    calls = []

    def die_after_three(self, rows, record):  # the process "dies" right after its third commit
        path = real(self, rows, record)
        calls.append(path)
        if len(calls) == 3:
            raise RuntimeError("the build died here")
        return path

    monkeypatch.setattr(build_module.BuildFolder, "commit_samples", die_after_three)
    with pytest.raises(RuntimeError, match="died here"):
        run_main(monkeypatch, capsys, "build", "--source", str(tiny_source), "--out", uri, *OPTIONS)
    monkeypatch.setattr(build_module.BuildFolder, "commit_samples", real)
    assert len([f for f in storage.list_files(uri) if f.startswith("manifest/")]) == 3
    # another machine: nothing of the staging folder survives, the store alone says what is committed
    import shutil

    shutil.rmtree(staging_dir(uri))
    code, output = run_main(monkeypatch, capsys, "build", "--source", str(tiny_source), "--out", uri, *OPTIONS)
    assert code == 0, output
    summary = json.loads(storage.read_bytes(storage.join(uri, "_summary.json")))
    assert summary["resumed"]["samples_committed_before"] == 3 and summary["samples"]["total"] == 6
    code, output = run_main(monkeypatch, capsys, "validate", uri)
    assert "6 samples" in output and "OK" in output, output


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
