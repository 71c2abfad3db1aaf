"""Builds and decoding on real videos and images nobody here made (LAYERFLOW_TEST_DATA, skipped when unset)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data

from datagen.build import build
from datagen.config import BuildConfig
from datagen.decode import decode
from datagen.eval_matting import evaluate_matting
from datagen.pipeline import LocalRunner
from datagen.sources import discover
from filters.audit import validate_dataset
from manifests import io
from manifests.layers import InputKind

SMALL = BuildConfig(frames=6, fps=8.0, size=(96, 128), val_fraction=0.0)  # every input drawn: no held-out share


@pytest.fixture(scope="module")
def real_build(tmp_path_factory):
    data = shared_data()
    out = tmp_path_factory.mktemp("real") / "ds"
    summary = build(str(data), out, SMALL, LocalRunner(progress=False))
    return data, out, summary


def test_a_build_over_the_real_data_accounts_for_every_input(real_build):
    data, out, summary = real_build
    inputs = io.read_inputs(out).to_pylist()
    assert summary["inputs"]["discovered"] == len(inputs) == summary["inputs"]["accounted"]
    assert {row["uri"] for row in inputs} == {item.uri for item in discover(str(data))}
    states = Counter(row["state"] for row in inputs)
    # a layered folder (ART cases, fg/bg/merged siblings, a photo with its matte) is one input, not one per file
    assert states["used"] >= 35 and sum(states.values()) == len(inputs)
    failures = {Path(f["uri"]).name: f for f in io.read_failures(out).to_pylist()}
    for name in ("README.md", "index.json", "selfie_segmentation.tflite"):
        assert failures[name]["stage"] == "discover"
    assert summary["samples"]["by_kind"]["video_copy_paste"] >= 8
    assert summary["samples"]["by_kind"]["image_frozen"] >= 20
    assert validate_dataset(out).ok


def test_davis_clips_use_their_masks_and_other_videos_are_background_subtracted(real_build):
    _, out, _ = real_build
    by_name = {Path(r["uri"]).parent.name if r["uri"].endswith("frames") else Path(r["uri"]).name: r
               for r in io.read_inputs(out).to_pylist()}
    assert by_name["davis_dance-twirl"]["matting_backend"] == "given"
    assert by_name["davis_blackswan"]["matting_backend"] == "given"
    assert by_name["01_dog.mp4"]["matting_backend"] == "bgsub"
    assert by_name["pymatting_beach.png"]["kind"] == InputKind.IMAGE.value  # opaque alpha: a plain image


def test_the_sam2_bedroom_mp4_and_its_frame_folder_are_built_once(real_build):
    _, out, summary = real_build
    inputs = {row["relative_path"]: row for row in io.read_inputs(out).to_pylist()}
    mp4, frames = inputs["videos/sam2_bedroom/bedroom.mp4"], inputs["videos/sam2_bedroom/frames"]
    assert mp4["state"] in ("used", "rejected", "unused") and mp4["duplicate_of"] is None
    assert frames["state"] == "duplicate" and frames["duplicate_of"] == mp4["input_id"] and not frames["sample_ids"]
    assert frames["message"].startswith("the same content as videos/sam2_bedroom/bedroom.mp4")
    assert summary["inputs"]["duplicate"] == sum(row["state"] == "duplicate" for row in inputs.values()) >= 1


def test_davis_masks_decode_as_alpha_aligned_with_frames():
    data = shared_data()
    [item] = discover(str(data / "videos" / "davis_blackswan"))
    assert item.kind == InputKind.FRAME_FOLDER and item.mask_dir.endswith("masks")
    clip = decode(item, BuildConfig(frames=4, fps=8.0, size=(240, 428))).clip
    assert set(np.unique(clip.alpha > 0.5)) == {False, True}
    # the swan is dark: pixels inside the mask are darker than those outside
    inside = clip.frames[clip.alpha > 0.5].mean()
    outside = clip.frames[clip.alpha < 0.5].mean()
    assert inside < outside


def test_mp4_and_its_jpeg_folder_decode_to_the_same_frames():
    data = shared_data()
    items = {item.kind: item for item in discover(str(data / "videos" / "sam2_bedroom"))}
    config = BuildConfig(frames=4, fps=10.0, size=(270, 480), frame_folder_fps=30.0)
    # The same input id gives the same seeded start, so both decode the same source frames.
    from_mp4 = decode(replace(items[InputKind.VIDEO], input_id="0" * 16), config).clip
    from_jpegs = decode(replace(items[InputKind.FRAME_FOLDER], input_id="0" * 16), config).clip
    assert from_mp4.frame_indices == from_jpegs.frame_indices
    assert np.diff(from_mp4.frame_indices).tolist() == [3, 3, 3]
    difference = np.abs(from_mp4.frames.astype(float) - from_jpegs.frames.astype(float)).mean()
    assert difference < 3.0  # H.264 vs JPEG of the same frames (the data README measured < 2 at full size)


def test_eval_matting_on_davis_layout_beside_the_frames():
    data = shared_data()
    videos = data / "videos"
    config = BuildConfig(frames=16, fps=8.0, size=(120, 214))
    # The ground truth is found beside the frames (videos/<name>/masks), and bgsub runs on the clip: blackswan is
    # filmed by a panning camera, which bgsub stabilises (its quality: tests/test_camera_motion.py).
    result = evaluate_matting(str(videos / "davis_blackswan"), str(videos), "bgsub", config)
    assert "errors" not in result and result["videos"]["davis_blackswan"]["frames"] == 16
    assert result["videos"]["davis_blackswan"]["camera"]["stabilised"] is True
    # `given` must not see the ground truth it is scored against
    given = evaluate_matting(str(videos / "davis_blackswan"), str(videos), "given", config)
    assert "no alpha" in given["errors"]["davis_blackswan"]

