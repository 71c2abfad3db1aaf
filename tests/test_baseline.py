"""The classical decomposition baseline (bgsub matte + temporal clean plate) on a tiny demo build: one prediction
per row, better than alpha 0 on moving clips, and a note instead of an exception where it cannot decompose."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from datagen.build import build
from datagen.config import BuildConfig
from datagen.demo import make_demo_source
from datagen.pipeline import LocalRunner
from layerflow_model.data import Row, read_rows
from manifests.dataset import open_dataset
from manifests.errors import ConfigError, InputError
from manifests.layers import Layer, SampleKind
from manifests.metrics import alpha_iou, foreground_mask, masked_psnr
from manifests.video_io import read_layer
from recipes.baseline import ClassicalDecomposer, classical_decomposition


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo source built at `reproduce`'s size (64x64, 4 frames at 8 fps), without CLIP, and only the kinds these
    tests look at (no clean plates to make)."""
    root = tmp_path_factory.mktemp("baseline_data")
    make_demo_source(root / "src")
    config = BuildConfig(size=(64, 64), frames=4, seed=9, val_fraction=0.25, clip="none",
                         kinds=(SampleKind.VIDEO_COPY_PASTE, SampleKind.IMAGE_FROZEN))
    build(str(root / "src"), root / "ds", config, LocalRunner())
    return root / "ds"


@pytest.fixture(scope="module")
def rows(dataset) -> list[Row]:
    return read_rows(dataset, None)


@pytest.fixture(scope="module")
def result(dataset, rows):
    return classical_decomposition(dataset, rows, progress=False)


def stored(dataset: Path, row: Row, layer: Layer) -> np.ndarray:
    return read_layer(open_dataset(dataset).media(row.uris[layer]), layer)


def of_kind(rows: list[Row], kind: SampleKind) -> list[Row]:
    found = [row for row in rows if row.kind is kind]
    assert found, f"the fixture build has no {kind.value} samples"
    return found


def test_one_prediction_per_row_with_four_layers_at_the_stored_size(dataset, rows, result):
    assert set(result.predictions) == {row.sample_id for row in rows}
    for row in rows:
        layers = result.predictions[row.sample_id]
        blended = stored(dataset, row, Layer.BLENDED)
        assert set(layers) == set(Layer)
        assert layers[Layer.ALPHA].shape == blended.shape[:3] and layers[Layer.ALPHA].dtype == np.uint8
        for layer in (Layer.FOREGROUND, Layer.BACKGROUND, Layer.BLENDED):
            assert layers[layer].shape == blended.shape and layers[layer].dtype == np.uint8
        np.testing.assert_array_equal(layers[Layer.BLENDED], blended)


def test_alpha_beats_alpha_zero_on_moving_copy_paste_samples(dataset, rows, result):
    moving = of_kind(rows, SampleKind.VIDEO_COPY_PASTE)
    truths = [stored(dataset, row, Layer.ALPHA) for row in moving]
    classical = np.mean([alpha_iou(result.predictions[row.sample_id][Layer.ALPHA], truth)
                         for row, truth in zip(moving, truths)])
    zero = np.mean([alpha_iou(np.zeros_like(truth), truth) for truth in truths])
    assert not {row.sample_id for row in moving} & set(result.notes)
    assert classical > zero + 0.3, (classical, zero)


def test_plate_beats_the_blend_as_background_inside_the_foreground(dataset, rows, result):
    moving = of_kind(rows, SampleKind.VIDEO_COPY_PASTE)
    plate, blend = [], []
    for row in moving:
        truth = stored(dataset, row, Layer.BACKGROUND).astype(np.float64)
        inside = foreground_mask(stored(dataset, row, Layer.ALPHA))
        plate.append(masked_psnr(truth, result.predictions[row.sample_id][Layer.BACKGROUND], inside))
        blend.append(masked_psnr(truth, stored(dataset, row, Layer.BLENDED), inside))
    assert np.mean(plate) > np.mean(blend) + 3.0, (np.mean(plate), np.mean(blend))


def test_a_frozen_sample_falls_back_to_the_trivial_prediction_with_a_note(dataset, rows, result):
    frozen = of_kind(rows, SampleKind.IMAGE_FROZEN)[0]
    layers = result.predictions[frozen.sample_id]
    assert "empty in every frame" in result.notes[frozen.sample_id]
    assert "\n" not in result.notes[frozen.sample_id]
    assert not layers[Layer.ALPHA].any()
    np.testing.assert_array_equal(layers[Layer.BACKGROUND], layers[Layer.BLENDED])
    np.testing.assert_array_equal(layers[Layer.FOREGROUND], layers[Layer.BLENDED])


def test_an_unreadable_blend_gets_a_note_and_black_frames_of_the_stored_size(dataset, rows):
    row = of_kind(rows, SampleKind.VIDEO_COPY_PASTE)[0]
    broken = replace(row, uris={**row.uris, Layer.BLENDED: "media/missing/blended.mp4"})
    result = classical_decomposition(dataset, [broken], progress=False)
    layers = result.predictions[row.sample_id]
    assert "blended layer unreadable" in result.notes[row.sample_id]
    assert layers[Layer.BLENDED].shape == stored(dataset, row, Layer.BLENDED).shape
    assert not any(layers[layer].any() for layer in Layer)


def test_a_clip_of_fewer_than_three_frames_is_refused(dataset, rows):
    blended = stored(dataset, of_kind(rows, SampleKind.VIDEO_COPY_PASTE)[0], Layer.BLENDED)
    with pytest.raises(InputError, match="at least 3 frames"):
        ClassicalDecomposer()(blended[:2])


def test_rows_of_another_dataset_are_a_config_error(dataset, rows):
    stranger = replace(rows[0], sample_id="0" * 16)
    with pytest.raises(ConfigError, match="not samples of"):
        classical_decomposition(dataset, [stranger], progress=False)


def test_two_runs_give_the_same_prediction(dataset, rows, result):
    again = classical_decomposition(dataset, rows, progress=False)
    assert again.notes == result.notes
    for sample_id, layers in result.predictions.items():
        for layer in Layer:
            np.testing.assert_array_equal(again.predictions[sample_id][layer], layers[layer])
