"""The `tflite:<path>` matting backend: the real MediaPipe person model on DAVIS frames (when the shared data is
there), and tiny TFLite flatbuffers written here with the LiteRT schema (no download, no TensorFlow)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from conftest import shared_data
from PIL import Image

from datagen.decode import load_mask
from datagen.matting import load_matting
from datagen.matting.tflite import TfliteMatting
from datagen.video_clip import VideoClip
from manifests.errors import ConfigError
from manifests.metrics import alpha_iou

SELFIE_MODEL = "weights/mediapipe_selfie_segmentation/selfie_segmentation.tflite"
DANCE = "videos/davis_dance-twirl"


def write_tiny_model(path: Path, input_shape: list[int], input_scale: float,
                     conv: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """A TFLite model: uint8 input (quantised: real = input_scale * q) -> DEQUANTIZE -> 1x1 CONV_2D.

    `conv` is the (C_out, 3) weights and (C_out,) bias, so the output is (1, H, W, C_out) float32; without
    it the model stops after DEQUANTIZE (any input shape then loads).
    """
    quantised = schema.QuantizationParametersT()
    quantised.scale, quantised.zeroPoint = [input_scale], [0]

    def tensor(name: str, shape: list[int], kind: int, buffer: int = 0, quantization=None) -> schema.TensorT:
        t = schema.TensorT()
        t.name, t.shape, t.type, t.buffer, t.quantization = name, shape, kind, buffer, quantization
        return t

    def operator(opcode: int, inputs: list[int], outputs: list[int], options=None) -> schema.OperatorT:
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = opcode, inputs, outputs
        if options is not None:
            op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.Conv2DOptions, options
        return op

    def buffer(values: np.ndarray | None = None) -> schema.BufferT:
        b = schema.BufferT()
        b.data = None if values is None else list(np.asarray(values, np.float32).tobytes())
        return b

    conv_options = schema.Conv2DOptionsT()
    conv_options.strideW = conv_options.strideH = 1
    codes = []
    for builtin in (schema.BuiltinOperator.DEQUANTIZE, schema.BuiltinOperator.CONV_2D):
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = builtin
        codes.append(code)
    graph = schema.SubGraphT()
    graph.tensors = [
        tensor("image", input_shape, schema.TensorType.UINT8, quantization=quantised),
        tensor("image_float", input_shape, schema.TensorType.FLOAT32),
    ]
    graph.inputs, graph.outputs = [0], [1]
    graph.operators = [operator(0, [0], [1])]
    model = schema.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, codes, [graph]
    model.buffers = [buffer()]
    if conv is not None:
        weights, bias = conv
        graph.tensors += [
            tensor("weights", [len(bias), 1, 1, 3], schema.TensorType.FLOAT32, buffer=1),
            tensor("bias", [len(bias)], schema.TensorType.FLOAT32, buffer=2),
            tensor("mask", [*input_shape[:-1], len(bias)], schema.TensorType.FLOAT32),
        ]
        graph.outputs = [4]
        graph.operators.append(operator(1, [1, 2, 3], [4], conv_options))
        model.buffers += [buffer(weights), buffer(bias)]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(builder.Output())
    return path


def red_detector(path: Path, input_shape: tuple[int, int] = (8, 8)) -> Path:
    """Two-class model, channel 1 = foreground: logit 20 * (red - 0.5), red in [0, 1]. Its uint8 input
    is quantised with scale 2/255, so only a backend that reads the quantisation sees the right red."""
    weights = np.array([[0.0, 0.0, 0.0], [20.0, 0.0, 0.0]], np.float32)
    return write_tiny_model(path, [1, *input_shape, 3], 2.0 / 255.0, (weights, np.array([0.0, -10.0], np.float32)))


def dance_clip(data: Path, frames: list[int]) -> tuple[VideoClip, np.ndarray]:
    """Real DAVIS frames at their full 480x854 and the ground-truth masks."""
    folder = data / DANCE
    rgb = np.stack([np.asarray(Image.open(folder / "frames" / f"{i:05d}.jpg").convert("RGB")) for i in frames])
    truth = np.stack([load_mask(folder / "masks" / f"{i:05d}.png") for i in frames])
    return VideoClip(rgb, fps=24.0, frame_indices=frames), truth


# --- the real model -------------------------------------------------------------------------------------


def test_real_model_mattes_the_davis_dancer() -> None:
    data = shared_data()
    clip, truth = dance_clip(data, [0, 30, 60, 89])
    matte = load_matting(f"tflite:{data / SELFIE_MODEL}")(clip)
    assert matte.alpha.shape == (4, 480, 854)
    assert matte.alpha.dtype == np.float32
    assert matte.alpha.min() >= 0.0 and matte.alpha.max() <= 1.0
    assert 0.0 < matte.alpha.mean() < 0.3  # a person, not an empty or a full frame
    assert alpha_iou(matte.alpha, truth) > 0.5
    model_bytes = (data / SELFIE_MODEL).read_bytes()
    assert matte.backend.name == "tflite"
    assert matte.backend.model_id == "selfie_segmentation.tflite"
    assert matte.backend.weights_sha256 == hashlib.sha256(model_bytes).hexdigest()
    assert matte.backend.device == "cpu"


def test_real_model_is_deterministic() -> None:
    data = shared_data()
    clip, _ = dance_clip(data, [10, 11, 12])
    backend = TfliteMatting(path=str(data / SELFIE_MODEL), num_threads=2)
    first = backend(clip).alpha
    np.testing.assert_array_equal(backend(clip).alpha, first)
    np.testing.assert_array_equal(TfliteMatting(path=str(data / SELFIE_MODEL))(clip).alpha, first)


# --- start-up errors ------------------------------------------------------------------------------------


def test_a_gpu_request_is_refused_not_ignored(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tflite runs on the CPU only"):
        load_matting(f"tflite:{tmp_path / 'model.tflite'}", device="cuda")


def test_missing_model_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.tflite"
    with pytest.raises(ConfigError, match="does not exist") as caught:
        load_matting(f"tflite:{missing}")
    assert str(missing) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_file_that_is_not_tflite_is_a_config_error_naming_it(tmp_path: Path) -> None:
    not_a_model = tmp_path / "notes.tflite"
    not_a_model.write_text("these are not the weights you are looking for\n" * 10)
    with pytest.raises(ConfigError, match="is not a TFLite model") as caught:
        load_matting(f"tflite:{not_a_model}")
    assert str(not_a_model) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_input_that_is_not_one_rgb_frame_is_a_config_error(tmp_path: Path) -> None:
    rank3 = write_tiny_model(tmp_path / "rank3.tflite", [8, 8, 3], 1.0 / 255.0)
    with pytest.raises(ConfigError, match=r"input must be one \(1, H, W, 3\) RGB frame") as caught:
        load_matting(f"tflite:{rank3}")
    assert str(rank3) in str(caught.value)


def test_spec_without_a_path_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"tflite:<path to \.tflite>"):
        load_matting("tflite")


# --- input encoding and output decoding -----------------------------------------------------------------


def test_quantised_uint8_input_and_two_class_softmax_output(tmp_path: Path) -> None:
    model = red_detector(tmp_path / "red.tflite")
    # Red 200 (0.78) is foreground; red 100 (0.39) is background, though it would pass for 0.78 were the
    # raw pixel fed without the input's 2/255 scale.
    frame = np.zeros((16, 24, 3), np.uint8)
    frame[:, :12, 0], frame[:, 12:, 0] = 200, 100
    backend = TfliteMatting(path=str(model), refine=False)
    soft = backend.predict(frame)
    assert soft.shape == (8, 8)
    for columns, red in ((slice(0, 4), 200), (slice(4, 8), 100)):
        np.testing.assert_allclose(soft[:, columns], 1.0 / (1.0 + np.exp(10.0 - 20.0 * red / 255)), atol=0.01)
    alpha = backend(VideoClip(frame[None], fps=24.0)).alpha
    assert alpha.shape == (1, 16, 24)
    np.testing.assert_array_equal(alpha[0, :, :11], 1.0)
    np.testing.assert_array_equal(alpha[0, :, 13:], 0.0)
    assert backend(VideoClip(frame[None])).backend.weights_sha256 == hashlib.sha256(model.read_bytes()).hexdigest()


def test_soft_mask_is_upsampled_bilinearly_before_the_threshold(tmp_path: Path) -> None:
    backend = TfliteMatting(path=str(red_detector(tmp_path / "red.tflite")), refine=False)
    # A red disk in a 64x64 clip, seen by the network at 8x8: thresholding there and blowing the mask up
    # gives 8-px blocks; upsampling the soft mask first puts the edge between the network's pixels.
    yy, xx = np.mgrid[:64, :64]
    disk = np.hypot(yy - 31.5, xx - 31.5) <= 20
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[disk, 0] = 255
    alpha = backend(VideoClip(frame[None], fps=24.0)).alpha
    blocky = np.kron(backend.predict(frame) >= 0.5, np.ones((8, 8)))
    assert alpha_iou(alpha, disk) > 0.8
    assert alpha_iou(alpha, disk) > alpha_iou(blocky, disk) + 0.04


# --- temporal smoothing ---------------------------------------------------------------------------------


def flicker(alpha: np.ndarray) -> float:
    """Mean absolute alpha change between consecutive frames."""
    return float(np.abs(np.diff(alpha, axis=0)).mean())


def test_temporal_smoothing_outvotes_one_odd_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A still person whose per-frame mask drops out in frame 3 of 7: smoothing keeps the person there."""
    model = red_detector(tmp_path / "red.tflite")
    disk = np.zeros((8, 8), np.float32)
    disk[2:6, 2:6] = 1.0
    per_frame = [disk, disk, disk, np.zeros_like(disk), disk, disk, disk]
    clip = VideoClip(np.zeros((7, 32, 32, 3), np.uint8), fps=24.0)
    alphas = {}
    for smooth_s in (0.0, 0.04):
        backend = TfliteMatting(path=str(model), smooth_s=smooth_s, refine=False)
        frames = iter(per_frame)
        monkeypatch.setattr(backend, "predict", lambda frame, frames=frames: next(frames))
        alphas[smooth_s] = backend(clip).alpha
    raw, smoothed = alphas[0.0], alphas[0.04]
    assert raw[3].max() == 0.0 and raw[2].sum() > 0  # the glitch shows through without smoothing ...
    assert smoothed[3, 10:22, 10:22].min() == 1.0  # ... and with it the person's interior is back
    assert alpha_iou(smoothed[3], smoothed[2]) > 0.9
    assert flicker(raw) > 0.05
    assert flicker(smoothed) < flicker(raw) / 3


def test_smoothing_is_off_for_zero_or_for_a_clip_without_frame_rate(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    model = red_detector(tmp_path / "red.tflite")
    masks = [np.full((8, 8), v, np.float32) for v in (0.9, 0.1, 0.9)]
    for smooth_s, fps in ((0.0, 24.0), (0.04, 0.0)):
        backend = TfliteMatting(path=str(model), smooth_s=smooth_s, refine=False)
        frames = iter(masks)
        monkeypatch.setattr(backend, "predict", lambda frame, frames=frames: next(frames))
        alpha = backend(VideoClip(np.zeros((3, 8, 8, 3), np.uint8), fps=fps)).alpha
        np.testing.assert_array_equal(alpha[:, 0, 0], [1.0, 0.0, 1.0])


def test_refinement_gives_soft_edges_that_follow_the_frame(tmp_path: Path) -> None:
    backend = TfliteMatting(path=str(red_detector(tmp_path / "red.tflite")), smooth_s=0.0)
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[16:48, 16:48, 0] = 255
    frame = cv2.GaussianBlur(frame, (0, 0), 2.0)  # a soft boundary for the guided filter to follow
    alpha = backend(VideoClip(frame[None], fps=24.0)).alpha[0]
    assert alpha[32, 32] == 1.0 and alpha[2, 2] == 0.0  # interior and exterior stay exact
    edge = alpha[32, 10:22]
    assert ((edge > 0.05) & (edge < 0.95)).any()  # a soft band at the edge
    assert np.all(np.diff(edge) >= -1e-6)  # rising into the square
