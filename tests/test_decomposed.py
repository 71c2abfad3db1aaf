"""`video_decomposed` samples: the temporal clean plate, the solved foreground, the refusals, and a build that makes
them beside the other kinds."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import moving_disk, texture, write_video
from PIL import Image

from datagen.build import build
from datagen.cleanplate import (
    MAX_INVENTED,
    PlateClip,
    TemporalPlate,
    load_clean_plate,
    make_plate,
    matte_refusal,
    nan_median,
    plate_indices,
)
from datagen.composite import decompose
from datagen.config import BuildConfig, parse_kinds
from datagen.matting import load_matting
from datagen.pipeline import LocalRunner
from datagen.sources import discover
from filters.audit import validate_dataset
from filters.policy import Policy
from filters.report import write_report
from manifests import io
from manifests.dataset import open_dataset
from manifests.errors import ConfigError, InputError
from manifests.layers import Layer, SampleKind
from manifests.metrics import psnr
from manifests.schema import PLATE_SCORES, SAMPLE_SCHEMA
from manifests.video_io import quantise, read_layer, write_rgb_video

SCHEMA_5_COLUMNS = ("clean_plate", "foreground_colour", "plate_invented_uri", *PLATE_SCORES)


def still_camera(count: int = 24, height: int = 64, width: int = 96, seed: int = 1):
    """A textured disk crossing a still scene: frames, exact alpha, the true background, identity camera."""
    frames, alpha = moving_disk(count, height, width, seed=seed)
    return frames, alpha, texture(height, width, seed), np.broadcast_to(np.eye(3), (count, 3, 3)).copy()


def test_decompose_gives_the_clip_back_over_its_plate():
    frames, alpha, background, _ = still_camera()
    layers = decompose(frames, alpha, np.broadcast_to(background, frames.shape))
    assert np.abs(layers.blended.astype(int) - frames).max() <= 1  # the blended layer is the clip itself
    clear = layers.alpha == 0
    assert np.array_equal(layers.background[clear], frames[clear])  # the frame where nothing covers it
    opaque = layers.alpha == 255
    assert np.array_equal(layers.foreground[opaque], frames[opaque])  # the object's own colour where it is opaque
    recomposed = layers.alpha[..., None] / 255 * layers.foreground + (1 - layers.alpha[..., None] / 255) \
        * layers.background
    assert psnr(layers.blended, recomposed) > 50


def test_foreground_fill_where_alpha_is_zero_is_the_estimate_not_black():
    frames, alpha, background, _ = still_camera()
    layers = decompose(frames, alpha, np.broadcast_to(background, frames.shape))
    # pymatting carries the object's colour outwards: next to the object the fill is close to its edge colour
    edge = (layers.alpha > 200)[0]
    ring = (layers.alpha == 0)[0] & (np.abs(np.arange(96) - edge.nonzero()[1].mean()) < 20)[None, :]
    assert layers.foreground[0][ring].mean() > 20


def test_temporal_plate_recovers_the_background_behind_a_moving_object():
    frames, alpha, background, camera = still_camera()
    targets = [0, 6, 12, 18]
    plate, invented = TemporalPlate()(PlateClip(frames, alpha, camera, list(range(24))), targets,
                                      quantise(alpha[targets]))
    covered = quantise(alpha[targets]) > 0
    assert not invented.any()
    assert psnr(plate[covered], np.broadcast_to(background, plate.shape)[covered]) > 40


def test_temporal_plate_follows_a_panning_camera():
    scene = texture(64, 160, 3)
    count, shift = 24, 2.0
    disk, disk_alpha = moving_disk(count, 64, 96, seed=5)
    frames = np.empty_like(disk)
    for t in range(count):  # the camera pans right `shift` px a frame over the scene; the object moves in the frame
        view = scene[:, round(t * shift):round(t * shift) + 96].astype(np.float32)
        a = disk_alpha[t][..., None]
        frames[t] = np.rint(a * disk[t] + (1 - a) * view)
    middle = (count - 1) // 2
    matrices = np.stack([np.array([[1, 0, (t - middle) * shift], [0, 1, 0], [0, 0, 1]], float) for t in range(count)])
    targets = [2, 9, 16]
    plate, invented = TemporalPlate()(PlateClip(frames, disk_alpha, matrices, list(range(count))), targets,
                                      quantise(disk_alpha[targets]))
    truth = np.stack([scene[:, round(t * shift):round(t * shift) + 96] for t in targets])
    covered = quantise(disk_alpha[targets]) > 0
    assert invented[covered].mean() < 0.05
    assert psnr(plate[covered & ~invented], truth[covered & ~invented]) > 35


def test_a_pixel_no_frame_shows_is_inpainted_and_counted():
    frames, alpha, _, camera = still_camera()
    alpha[:] = alpha[0]  # the matte never moves: what it covers is never seen
    _, invented = TemporalPlate()(PlateClip(frames, alpha, camera, list(range(24))), [3], quantise(alpha[[3]]))
    assert np.array_equal(invented[0], quantise(alpha[3]) > 0)


def test_nan_median_leaves_nans_out():
    values = np.array([[1, np.nan], [np.nan, np.nan], [3, np.nan], [10, np.nan]], np.float32)[..., None]
    assert nan_median(values)[0, 0] == 3 and np.isnan(nan_median(values)[1, 0])
    assert nan_median(values[:2])[0, 0] == 1


def test_plate_frames_span_the_whole_clip():
    assert plate_indices(200, [50, 53, 56], 5) == [0, 50, 53, 56, 100, 149, 199]
    assert plate_indices(10, [2, 4], 64) == list(range(10))


def test_an_empty_or_full_matte_is_refused():
    assert "empty" in matte_refusal(np.zeros((3, 8, 8), np.uint8))
    assert "covers 100%" in matte_refusal(np.full((3, 8, 8), 255, np.uint8))
    assert matte_refusal(quantise(still_camera()[1])) is None


def test_an_unknown_clean_plate_is_a_config_error():
    assert load_clean_plate("temporal").name == "temporal"
    with pytest.raises(ConfigError, match="clean_plate"):
        load_clean_plate("magic")


def test_kinds_parse_and_refuse_unknown_ones():
    assert parse_kinds("video_decomposed, image_frozen") == (SampleKind.IMAGE_FROZEN, SampleKind.VIDEO_DECOMPOSED)
    assert parse_kinds("all") == tuple(SampleKind)
    with pytest.raises(ConfigError, match="kinds"):
        BuildConfig(kinds="video_pasted")
    assert BuildConfig(kinds="video_decomposed").fingerprint() == BuildConfig().fingerprint()  # same sample ids


def masked_clip(folder: Path, name: str, frames: np.ndarray, alpha: np.ndarray) -> Path:
    """A video with its masks beside it (`x.mp4` + `x_masks/`): matted by `given`."""
    video = write_rgb_video_at(folder / f"{name}.mp4", frames)
    masks = folder / f"{name}_masks"
    masks.mkdir(parents=True)
    for t, a in enumerate(alpha):
        Image.fromarray(np.where(a >= 0.5, 255, 0).astype(np.uint8)).save(masks / f"{t:05d}.png")
    return video


def write_rgb_video_at(path: Path, frames: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_rgb_video(path, frames, 24.0)
    return path


def plate_of(folder: Path, config: BuildConfig):
    from datagen.decode import decode

    item = next(i for i in discover(str(folder)) if i.kind.is_video)
    decoded = decode(item, config)
    matting = load_matting("auto")
    decoded.clip.alpha = matting(decoded.clip).alpha
    return make_plate(item, decoded.clip, decoded.source_frames, matting, config, TemporalPlate())


def test_make_plate_uses_the_whole_clip(tmp_path):
    frames, alpha, background, _ = still_camera()
    masked_clip(tmp_path, "disk", frames, alpha)
    plate = plate_of(tmp_path, BuildConfig(frames=4, fps=8.0, size=(64, 96)))
    assert plate.scores["plate_invented_max"] == 0.0 and plate.scores["plate_stability"] > 30
    assert plate.background.shape == (4, 64, 96, 3)


def test_a_plate_that_would_be_mostly_invented_is_refused(tmp_path):
    frames, alpha, _, _ = still_camera()
    still = np.repeat(frames[:1], len(frames), axis=0)  # the object never moves: nothing behind it is ever seen
    masked_clip(tmp_path, "still", still, np.repeat(alpha[:1], len(alpha), axis=0))
    with pytest.raises(InputError, match="mostly invented"):
        plate_of(tmp_path, BuildConfig(frames=4, fps=8.0, size=(64, 96)))
    assert MAX_INVENTED == 0.5


def test_motion_that_cannot_be_estimated_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (24, 64, 96, 3), dtype=np.uint8)  # every frame unrelated to the last
    _, alpha, _, _ = still_camera()
    masked_clip(tmp_path, "noise", noise, alpha)
    with pytest.raises(InputError, match="camera motion cannot be estimated"):
        plate_of(tmp_path, BuildConfig(frames=4, fps=8.0, size=(64, 96)))


def test_the_default_policy_rejects_mostly_invented_plates_and_flags_partly_invented_ones():
    policy = Policy.default()
    row = {"kind": SampleKind.VIDEO_DECOMPOSED.value, "caption_layers": 3}
    assert policy.decide({**row, "plate_invented_mean": 0.0, "plate_invented_max": 0.0}).keep
    partly = policy.decide({**row, "plate_invented_mean": 0.1, "plate_invented_max": 0.3})
    assert partly.keep and partly.flags == ["plate_invented_mean>0.05"]
    mostly = policy.decide({**row, "plate_invented_mean": 0.3, "plate_invented_max": 0.7})
    assert not mostly.keep and "plate_invented_max>0.5" in mostly.reject_reasons


@pytest.fixture(scope="module")
def decomposed_build(tmp_path_factory):
    """Two moving-disk clips (one whose object never moves, matted from its masks), a background clip; built."""
    root = tmp_path_factory.mktemp("src")
    write_video(root / "fg_a.mp4", seed=1)
    (root / "fg_a.txt").write_text("a red disk")
    frames, alpha, _, _ = still_camera(seed=7)
    masked_clip(root, "parked", np.repeat(frames[:1], 24, axis=0), np.repeat(alpha[:1], 24, axis=0))
    write_video(root / "plates" / "bg_c.mp4", seed=3)
    (root / "plates" / "bg_c.json").write_text(json.dumps({"role": "background", "background": "a wall"}))
    # no val share: which clip a held-out draw would leave without a background is not what these tests are about
    config = BuildConfig(frames=4, fps=8.0, size=(64, 96), seed=0, val_fraction=0.0)
    out = tmp_path_factory.mktemp("ds")
    summary = build(str(root), out, config, LocalRunner(progress=False))
    return root, out, config, summary


def test_a_build_makes_decomposed_samples_from_the_clips_that_matte(decomposed_build):
    root, out, _, summary = decomposed_build
    rows = [r for r in io.read_manifest(out).to_pylist() if r["kind"] == SampleKind.VIDEO_DECOMPOSED.value]
    assert [Path(r["source_foreground"]).name for r in rows] == ["fg_a.mp4"]
    row = rows[0]
    assert row["source_background"] == row["source_foreground"] and row["matting_backend"] == "bgsub"
    assert row["clean_plate"] == "temporal" and row["foreground_colour"] == "solved"
    assert row["recompose_psnr"] > 35 and row["source_composite_psnr"] > 50  # the blended layer is the clip
    assert row["plate_invented_max"] is not None and row["plate_stability"] > 25
    invented = read_layer(out / row["plate_invented_uri"], Layer.ALPHA)
    assert invented.shape == (4, 64, 96)
    assert validate_dataset(out).ok, validate_dataset(out).problems
    others = [r for r in io.read_manifest(out).to_pylist() if r["kind"] != SampleKind.VIDEO_DECOMPOSED.value]
    assert all(r["plate_invented_mean"] is None and r["clean_plate"] is None for r in others)
    assert summary["unscored"]["plate_invented_mean"]["why"] == "no clean plate: not a video_decomposed sample"


def test_a_clip_with_no_plate_says_why_and_serves_in_its_other_roles(decomposed_build):
    _, out, _, _ = decomposed_build
    inputs = {Path(r["uri"]).name: r for r in io.read_inputs(out).to_pylist()}
    parked = inputs["parked.mp4"]
    assert parked["state"] == "used" and parked["stage"] == "clean_plate"  # still pasted onto other clips
    assert parked["message"].startswith("no video_decomposed sample: the clean plate would be mostly invented")
    assert io.read_failures(out).num_rows == 0


def test_kinds_selects_the_samples_and_keeps_their_ids(decomposed_build, tmp_path):
    root, out, config, _ = decomposed_build
    only = build(str(root), tmp_path / "only", replace(config, kinds=(SampleKind.VIDEO_DECOMPOSED,)),
                 LocalRunner(progress=False))
    assert only["samples"]["by_kind"] == {"video_decomposed": 1}
    full = {r["sample_id"] for r in io.read_manifest(out).to_pylist() if r["kind"] == "video_decomposed"}
    assert {r["sample_id"] for r in io.read_manifest(tmp_path / "only").to_pylist()} == full


def test_the_report_shows_decomposed_beside_copy_paste_with_the_invented_region(decomposed_build, tmp_path):
    _, out, _, _ = decomposed_build
    page = write_report(out, tmp_path / "report.html", gallery=2).read_text()
    kept = page.split('id="kept"')[1].split('id="rejected"')[0]
    assert kept.count('class="card kept"') == 2
    assert "video_decomposed" in kept and "video_copy_paste" in kept
    assert "invented: magenta" in kept


def test_a_manifest_of_schema_4_reads_with_the_new_columns_null(decomposed_build, tmp_path):
    _, out, _, _ = decomposed_build
    old = tmp_path / "old"
    shutil.copytree(out, old)
    schema_4 = pa.schema([f for f in SAMPLE_SCHEMA if f.name not in SCHEMA_5_COLUMNS],
                         metadata={**SAMPLE_SCHEMA.metadata, b"layerflow.schema_version": b"4"})
    for part in sorted((old / "manifest").glob("part-*.parquet")):
        rows = pq.read_table(part).select(schema_4.names).to_pylist()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema_4), part)
    rows = open_dataset(old).manifest().to_pylist()
    assert rows and all(row[name] is None for row in rows for name in SCHEMA_5_COLUMNS)
    assert write_report(old, tmp_path / "old.html").is_file()  # the report reads it too
