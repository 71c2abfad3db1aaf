"""End-to-end builds on tiny synthetic sources with the plain runner, plus one through Ray."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import write_layered, write_rgba, write_video
from PIL import Image

from datagen.build import build
from datagen.pipeline import LocalRunner
from filters.audit import validate_dataset
from manifests import io
from manifests.errors import ConfigError
from manifests.io import read_layers
from manifests.layers import InputState, Layer
from manifests.metrics import psnr, recompose


def run(source, out, config, **kwargs):
    return build(str(source), out, config, LocalRunner(progress=False), **kwargs)


@pytest.fixture
def built(tiny_source, tmp_path, small_config):
    out = tmp_path / "ds"
    summary = run(tiny_source, out, small_config)
    return out, summary


def test_tiny_build_makes_the_expected_samples(built):
    out, summary = built
    table = io.read_manifest(out)
    kinds = Counter(table.column("kind").to_pylist())
    # fg_a and fg_b each go on 2 of the other videos and are each decomposed over their own clean plate; the layered
    # folder and the RGBA sticker are frozen.
    assert kinds == {"video_copy_paste": 4, "image_frozen": 2, "video_decomposed": 2}
    assert summary["samples"]["total"] == 8
    assert summary["inputs"]["discovered"] == summary["inputs"]["accounted"] == 6


def test_every_input_has_one_end_state(built):
    out, summary = built
    inputs = {os.path.basename(r["uri"]): r for r in io.read_inputs(out).to_pylist()}
    assert {name: r["state"] for name, r in inputs.items()} == {
        "fg_a.mp4": "used", "fg_b.mp4": "used", "bg_c.mp4": "used", "one": "used", "star.png": "used",
        "paper.jpg": "used",
    }
    assert sum(summary["inputs"][s.value] for s in InputState) == 6
    assert any(row["matting_backend"] == "bgsub" for row in inputs.values())
    for row in inputs.values():  # where bgsub matted a clip, how its camera moved is on the input's row
        if row["matting_backend"] == "bgsub":
            camera = json.loads(row["camera_motion"])
            assert camera["stabilised"] is False and camera["pan_px"] < 1  # the tiny source's camera is still
        else:
            assert row["camera_motion"] is None


def test_samples_recompose_from_their_files(built, small_config):
    out, _ = built
    for row in io.read_manifest(out).to_pylist():
        layers = read_layers(out, row["sample_id"])
        assert layers[Layer.ALPHA].shape == (small_config.frames, *small_config.size)
        assert row["recompose_psnr"] > 30.0
        recomposed = recompose(layers[Layer.FOREGROUND], layers[Layer.ALPHA], layers[Layer.BACKGROUND])
        assert abs(psnr(layers[Layer.BLENDED], recomposed) - row["recompose_psnr"]) < 1e-3


def test_provenance_and_captions(built):
    out, _ = built
    rows = {r["source_foreground"].split("/")[-1] + ">" + r["source_background"].split("/")[-1]: r
            for r in io.read_manifest(out).to_pylist()}
    video = rows["fg_a.mp4>bg_c.mp4"]
    assert video["caption_foreground"] == "a red disk" and video["caption_background"] == "a wall"
    assert video["caption_blended"] == "a red disk in front of a wall"
    assert video["matting_backend"] == "bgsub" and video["captioner"] == "sidecar"
    assert np.diff(video["frames_foreground"]).tolist() == [3, 3, 3]
    assert set(json.loads(video["placement"])) == {"scale", "dx", "dy"}
    layered = rows["one>one"]
    assert layered["kind"] == "image_frozen" and layered["caption_blended"] == "a coin on grass"
    assert layered["matting_backend"] == "given"


def test_build_is_deterministic(tiny_source, tmp_path, small_config):
    a = io.read_manifest(run(tiny_source, tmp_path / "a", small_config)["out"]).sort_by("sample_id")
    b = io.read_manifest(run(tiny_source, tmp_path / "b", small_config)["out"]).sort_by("sample_id")
    assert a.column("sample_id").to_pylist() == b.column("sample_id").to_pylist()
    assert a.column("placement").to_pylist() == b.column("placement").to_pylist()


def test_validate_passes_on_a_fresh_build_and_catches_damage(built):
    out, _ = built
    assert validate_dataset(out).ok
    row = io.read_manifest(out).to_pylist()[0]
    (out / row["uri_blended"]).write_bytes(b"")
    report = validate_dataset(out)
    assert not report.ok and any("blended does not decode" in p for p in report.problems)


def test_validate_reports_a_missing_file(built):
    out, _ = built
    row = io.read_manifest(out).to_pylist()[0]
    (out / row["uri_alpha"]).unlink()
    assert any("alpha file missing" in p for p in validate_dataset(out).problems)


def test_existing_dataset_is_not_overwritten_by_accident(built, tiny_source, small_config):
    out, _ = built
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file()}
    again = run(tiny_source, out, small_config)  # the same build: complete, nothing to do, nothing touched
    assert again["already_complete"] and again["samples"]["total"] == 8
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file()} == before
    with pytest.raises(ConfigError, match=r"holds a build of something else \(frames: 4 -> 6\).*--overwrite"):
        run(tiny_source, out, replace(small_config, frames=6))
    assert run(tiny_source, out, replace(small_config, frames=6), overwrite=True)["samples"]["total"] == 8


def test_the_x264_preset_changes_how_the_layers_are_stored_not_which_samples_there_are(built, tiny_source,
                                                                                       small_config):
    out, _ = built  # small_config: the default preset
    other = Path(run(tiny_source, out.parent / "medium", replace(small_config, x264_preset="medium"))["out"])
    mine, theirs = (io.read_manifest(path).sort_by("sample_id").to_pylist() for path in (out, other))
    assert [r["sample_id"] for r in mine] == [r["sample_id"] for r in theirs]  # the same samples, the same ids
    assert [r["placement"] for r in mine] == [r["placement"] for r in theirs]
    for a, b in zip(mine, theirs):
        assert (out / a["uri_alpha"]).read_bytes() == (other / b["uri_alpha"]).read_bytes()  # lossless either way
        assert (out / a["uri_blended"]).read_bytes() != (other / b["uri_blended"]).read_bytes()
        blends = (read_layers(root, row["sample_id"])[Layer.BLENDED] for root, row in ((out, a), (other, b)))
        assert psnr(*blends) > 30  # two encodings of one busy synthetic texture
    with pytest.raises(ConfigError, match=r"x264_preset: 'veryfast' -> 'medium'"):  # a resume must match
        run(tiny_source, out, replace(small_config, x264_preset="medium"))
    with pytest.raises(ConfigError, match="x264_preset: one of"):
        replace(small_config, x264_preset="quick")


def test_separate_background_pool(tmp_path, small_config):
    write_video(tmp_path / "src" / "fg.mp4", seed=1)
    write_video(tmp_path / "bgs" / "plate_1.mp4", seed=2)
    write_video(tmp_path / "bgs" / "plate_2.mp4", seed=3)
    write_video(tmp_path / "bgs" / "plate_3.mp4", seed=4)
    summary = run(tmp_path / "src", tmp_path / "ds", small_config, backgrounds=str(tmp_path / "bgs"))
    rows = io.read_manifest(tmp_path / "ds").to_pylist()
    pasted = [r for r in rows if r["kind"] == "video_copy_paste"]
    assert {os.path.basename(r["source_background"]) for r in pasted} <= {"plate_1.mp4", "plate_2.mp4", "plate_3.mp4"}
    assert len(pasted) == 2
    # the clip is also decomposed over its own clean plate: its background is its own, as a layered image's
    assert [os.path.basename(r["source_background"]) for r in rows if r["kind"] == "video_decomposed"] == ["fg.mp4"]
    assert summary["inputs"]["unused"] == 1  # one spare plate, valid but not drawn


def test_bad_inputs_never_kill_a_build_and_are_never_lost(tmp_path, small_config):
    src = tmp_path / "src"
    write_video(src / "good one.mp4", seed=1)
    write_video(src / "vidéo deux.mp4", seed=2)
    (src / "zero.mp4").write_bytes(b"")
    truncated = write_video(src / "truncated.mp4", num_frames=48, seed=3)
    truncated.write_bytes(truncated.read_bytes()[:600])
    (src / "notes.mp4").write_text("not a video\n" * 50)
    (src / "random.bin").write_bytes(os.urandom(2048))
    write_video(src / "short.mp4", num_frames=3, seed=4)
    write_layered(src / "transparent", seed=5)
    write_rgba(src / "transparent" / "foreground.png", 64, 96, alpha_value=0.0)
    write_layered(src / "opaque", seed=6)
    write_rgba(src / "opaque" / "foreground.png", 64, 96, alpha_value=1.0)
    (src / "odd").mkdir()
    for i in range(12):
        Image.fromarray(np.full((33, 47, 3), 20 * i, np.uint8)).save(src / "odd" / f"{i:03d}.png")
    os.symlink(src, src / "loop")
    summary = run(src, tmp_path / "ds", replace(small_config, frames=3))

    states = {os.path.basename(r["uri"]): r for r in io.read_inputs(tmp_path / "ds").to_pylist()}
    assert len(states) == summary["inputs"]["discovered"] == summary["inputs"]["accounted"] == 11
    for name in ("zero.mp4", "truncated.mp4", "notes.mp4", "random.bin", "short.mp4", "loop"):
        assert states[name]["state"] == "failed", name
        assert states[name]["stage"] and states[name]["message"] and "\n" not in states[name]["message"]
    assert states["transparent"]["state"] == "rejected" and states["opaque"]["state"] == "rejected"
    assert states["good one.mp4"]["state"] == "used" and states["vidéo deux.mp4"]["state"] == "used"
    assert states["odd"]["state"] != "failed"  # odd sizes are resized like any other
    failures = {os.path.basename(r["uri"]): r for r in io.read_failures(tmp_path / "ds").to_pylist()}
    assert failures["zero.mp4"]["message"] == "empty file (0 bytes)"
    assert failures["short.mp4"]["stage"] == "decode" and "too short" in failures["short.mp4"]["message"]
    assert failures["random.bin"]["stage"] == "discover"
    rejected = {os.path.basename(r["source_foreground"]): r["reject_reasons"]
                for r in io.read_manifest(tmp_path / "ds").to_pylist() if not r["keep"]}
    assert rejected["transparent"] == ["alpha_coverage_max<0.002", "alpha_empty_frames>0.25"]
    assert rejected["opaque"] == ["alpha_coverage_min>0.98", "alpha_full_frames>0.25"]


@pytest.mark.slow
def test_build_through_ray_matches_the_plain_runner(tiny_source, tmp_path, small_config):
    import ray

    from datagen.ray_runner import RayRunner

    runner = RayRunner(num_cpus=2, progress=False)
    try:
        assert not ray._private.worker.global_worker.node.address_info.get("webui_url")  # no dashboard started
        summary = build(str(tiny_source), tmp_path / "ray", small_config, runner)
    finally:
        runner.close()
    run(tiny_source, tmp_path / "plain", small_config)
    assert summary["runner"] == "ray"
    ray_rows = io.read_manifest(tmp_path / "ray").sort_by("sample_id")
    plain_rows = io.read_manifest(tmp_path / "plain").sort_by("sample_id")
    for column in ("sample_id", "kind", "placement", "frames_foreground", "caption_blended"):
        assert ray_rows.column(column).to_pylist() == plain_rows.column(column).to_pylist()
    assert validate_dataset(tmp_path / "ray").ok


def test_a_clip_that_cannot_be_matted_still_serves_as_a_background(tmp_path, small_config):
    from conftest import texture

    from manifests.video_io import write_rgb_video

    write_video(tmp_path / "src" / "static.mp4", seed=1)
    scene = texture(64, 400, 7)
    write_rgb_video(tmp_path / "src" / "pan.mp4", np.stack([scene[:, 4 * t : 4 * t + 96] for t in range(24)]), 24.0)
    run(tmp_path / "src", tmp_path / "ds", small_config)
    inputs = {os.path.basename(r["uri"]): r for r in io.read_inputs(tmp_path / "ds").to_pylist()}
    assert inputs["pan.mp4"]["state"] == "used"
    assert inputs["pan.mp4"]["stage"] == "matte"
    assert inputs["pan.mp4"]["message"].startswith("background only: bgsub:")
    samples = {row["kind"]: row for row in io.read_manifest(tmp_path / "ds").to_pylist()}
    assert sorted(samples) == ["video_copy_paste", "video_decomposed"]  # pan.mp4 is neither pasted nor decomposed
    assert os.path.basename(samples["video_copy_paste"]["source_background"]) == "pan.mp4"
    assert os.path.basename(samples["video_decomposed"]["source_foreground"]) == "static.mp4"
