"""The classical baseline for decomposition: weight-free matting of the blended clip (`bgsub`) over a temporal clean
plate, what a practitioner would try before a model; its layers go to the model's evaluator as predictions.

It sits among the recipes because it runs the data engine's matting and plate (`datagen`), which the evaluator in
`layerflow_model` may not import: the evaluator receives only arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from datagen.cleanplate import PlateClip, TemporalPlate, matte_refusal
from datagen.matting.bgsub import BackgroundSubtraction
from datagen.video_clip import VideoClip
from layerflow_model.data import Row
from manifests.dataset import Dataset, DatasetLike, open_dataset
from manifests.errors import ConfigError, InputError, one_line
from manifests.layers import Layer
from manifests.schema import SAMPLE_ID
from manifests.video_io import quantise, read_layer


@dataclass(frozen=True)
class ClassicalDecomposition:
    """What the baseline predicted for each sample id: the four layers at the dataset's stored size and frame count
    (foreground, background, blended (T, H, W, 3) uint8; alpha (T, H, W) uint8), and for the samples where it fell back
    to the trivial prediction (alpha 0, background = foreground = the blend), why, in one line."""

    predictions: dict[str, dict[Layer, np.ndarray]]
    notes: dict[str, str]


@dataclass
class ClassicalDecomposer:
    """Decomposes one blended clip as the data engine treats a real video: `bgsub`'s matte, the temporal clean plate
    behind it (`TemporalPlate`), and the blend's own colours as the foreground.

    The foreground is the blend rather than a straight colour solved from blend, matte and plate
    (`datagen.composite.solve_layers`, as `video_decomposed` samples are made, or pymatting's `estimate_foreground_ml`
    alone): both unmix the colours by the predicted alpha, so the matte's errors become colour errors. On the 21 moving
    samples of the `reproduce` demo build (64x64 x 4 frames), foreground PSNR inside the true foreground was 26.7 dB
    for the blend, 21.8 dB solved and 21.1 dB for pymatting's estimate; at the soft edge (true alpha below 1) 23.7,
    19.9 and 19.1 dB.

    `bgsub`'s defaults are kept at that size, px-valued ones included: on those samples none of edge_radius 1-3,
    blur_sigma 0-0.5, close_px 0-3, threshold_floor 6-20, low_ratio 0.3-0.7 or min_area up to 1 % raised the mean alpha
    IoU (0.63) by more than 0.01; static_px 2 raised it by 0.02 but the alpha error by a quarter.
    """

    matting: BackgroundSubtraction = field(default_factory=BackgroundSubtraction)
    plate: TemporalPlate = field(default_factory=TemporalPlate)

    def __call__(self, blended: np.ndarray) -> dict[Layer, np.ndarray]:
        """(T, H, W, 3) uint8 blended frames -> the four layers; raises `InputError` (one line) where bgsub refuses the
        clip (fewer than 3 frames, most of the frame changing) or finds nothing that moves (a still repeated)."""
        # 1. The matte, quantised as a dataset stores it (the plate and the evaluator see what a sample would hold).
        matte = self.matting(VideoClip(blended))
        alpha = quantise(matte.alpha)
        refusal = matte_refusal(alpha)
        if refusal:
            raise InputError(f"bgsub: {refusal}")
        # 2. The camera model the matte was made with: bgsub stabilises only a camera it could track; otherwise (a
        # static camera, or one too small or flat to track that passed its coverage check) it modelled a still one.
        count = len(blended)
        if matte.camera and matte.camera.get("stabilised"):
            matrices = self.matting.motion(blended).matrices
        else:
            matrices = np.broadcast_to(np.eye(3), (count, 3, 3))
        # 3. The clean plate: each covered pixel from the other frames that show it there, the rest inpainted. The
        # clip is its own whole source (the input is all a user has), so every frame is a target.
        frames = list(range(count))
        background, _ = self.plate(PlateClip(blended, matte.alpha, matrices, frames), frames, alpha)
        return {Layer.FOREGROUND: blended, Layer.ALPHA: alpha, Layer.BACKGROUND: background, Layer.BLENDED: blended}


def trivial_prediction(blended: np.ndarray) -> dict[Layer, np.ndarray]:
    """Alpha 0, background = foreground = the (T, H, W, 3) uint8 blend."""
    return {Layer.FOREGROUND: blended, Layer.ALPHA: np.zeros(blended.shape[:3], np.uint8),
            Layer.BACKGROUND: blended, Layer.BLENDED: blended}


def classical_decomposition(dataset: DatasetLike, rows: Sequence[Row], progress: bool = True,
                            decomposer: ClassicalDecomposer | None = None) -> ClassicalDecomposition:
    """The baseline's prediction for each of `rows` (e.g. `read_rows(dataset, "val")`) from its blended layer alone,
    at the stored size, all stored frames. A sample it cannot decompose gets the trivial prediction and a note; one
    whose blended file cannot be read gets black frames of its stored size. Rows that are not samples of `dataset`
    are a ConfigError."""
    dataset = open_dataset(dataset)
    decomposer = decomposer or ClassicalDecomposer()
    shapes = _stored_shapes(dataset, rows)
    predictions: dict[str, dict[Layer, np.ndarray]] = {}
    notes: dict[str, str] = {}
    for row in tqdm(rows, desc="classical", unit="sample", disable=not progress):
        try:
            blended = read_layer(dataset.media(row.uris[Layer.BLENDED]), Layer.BLENDED)
        except Exception as exc:  # an unreadable file is this sample's problem, never the evaluation's
            predictions[row.sample_id] = trivial_prediction(np.zeros(shapes[row.sample_id], np.uint8))
            notes[row.sample_id] = f"trivial prediction of black frames: blended layer unreadable ({_reason(exc)})"
            continue
        try:
            predictions[row.sample_id] = decomposer(blended)
        except Exception as exc:  # refusals are InputErrors; anything else on one clip must not end the run either
            predictions[row.sample_id] = trivial_prediction(blended)
            notes[row.sample_id] = f"trivial prediction: {_reason(exc)}"
    return ClassicalDecomposition(predictions, notes)


def _stored_shapes(dataset: Dataset, rows: Sequence[Row]) -> dict[str, tuple[int, int, int, int]]:
    """(T, H, W, 3) of each row's sample as the manifest records it."""
    table = dataset.manifest(columns=[SAMPLE_ID, "num_frames", "height", "width"]).to_pylist()
    shapes = {rec[SAMPLE_ID]: (rec["num_frames"], rec["height"], rec["width"], 3) for rec in table}
    strangers = [row.sample_id for row in rows if row.sample_id not in shapes]
    if strangers:
        raise ConfigError(f"rows: {len(strangers)} are not samples of {dataset.uri} (first: {strangers[0]})")
    return shapes


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {one_line(exc)}"
