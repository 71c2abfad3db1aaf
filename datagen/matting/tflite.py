"""`tflite:<path>`: a small segmentation network (e.g. MediaPipe Selfie Segmentation) run offline on CPU by
ai-edge-litert; its soft mask is smoothed over time, then thresholded and given a guided-filter edge."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
from scipy import ndimage

from datagen.matting.base import BackendInfo, Matte
from datagen.matting.refine import soft_edge
from datagen.video_clip import VideoClip
from manifests.errors import ConfigError, one_line

INPUT_TYPES = (np.float32, np.uint8)
FOREGROUND_CHANNEL = 1  # two-class heads (DeepLab style) put background in channel 0, the person in channel 1


@dataclass
class TfliteMatting:
    """Mattes the person (or whatever the network segments) in every frame of a clip.

    The network takes one (1, h, w, 3) RGB frame, float in [0, 1] or uint8 through the input tensor's
    quantisation, and returns a (1, h, w, 1) foreground probability or (1, h, w, 2) background / foreground
    logits (softmax, channel 1 is the foreground).
    """

    name: ClassVar[str] = "tflite"
    spec_option: ClassVar[str] = "path"  # `tflite:<path>` sets `path`

    path: str = ""  # the .tflite flatbuffer
    num_threads: int = 2  # interpreter CPU threads; one interpreter per worker
    device: str = "auto"  # the build's --device: ai-edge-litert runs on the CPU, so `cuda` is refused, not ignored
    # Gaussian weighting over time of the soft mask, sigma in seconds (so it means the same at any --fps); 0 = off.
    # A one-frame glitch of a per-frame network (a limb dropped, a patch of crowd taken for a person) is
    # outvoted by its neighbours. Nothing is motion-compensated, so fast motion smears when neighbours are far
    # apart in time: 0.04 s is about one frame at 24 fps and next to nothing at 8 fps (see README for the IoU).
    smooth_s: float = 0.04
    refine: bool = True  # guided-filter soft edge against the full-resolution frames; off = hard 0/1 mask
    edge_radius: int = 4  # guided filter radius (px) and width of the soft band around the edge
    edge_eps: float = 1e-3  # guided filter regulariser

    _interpreter: object = field(init=False, repr=False)
    _input: dict = field(init=False, repr=False)
    _output: dict = field(init=False, repr=False)
    _info: BackendInfo = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from ai_edge_litert.interpreter import Interpreter  # the runtime loads only when this backend is used

        if not self.path:
            raise ConfigError("tflite needs a model file: tflite:<path to .tflite>")
        if self.device == "cuda":
            raise ConfigError("tflite runs on the CPU only (ai-edge-litert has no GPU delegate here); "
                              "use --device auto or cpu, or a GPU backend such as rembg or sam2")
        model = Path(self.path)
        if not model.is_file():
            raise ConfigError(f"tflite model {self.path} does not exist")
        if self.smooth_s < 0 or self.num_threads < 1:
            raise ConfigError(f"tflite needs smooth_s >= 0 and num_threads >= 1, got {self.smooth_s} and "
                              f"{self.num_threads}")
        data = model.read_bytes()
        try:
            self._interpreter = Interpreter(model_content=data, num_threads=self.num_threads)
        except ValueError as exc:
            raise ConfigError(f"{self.path} is not a TFLite model: {one_line(exc)}") from None
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        in_shape, out_shape = tuple(self._input["shape"]), tuple(self._output["shape"])
        if len(in_shape) != 4 or in_shape[0] != 1 or in_shape[3] != 3:
            raise ConfigError(f"{self.path}: input must be one (1, H, W, 3) RGB frame, got shape {in_shape}")
        if self._input["dtype"] not in INPUT_TYPES:
            raise ConfigError(f"{self.path}: input must be float32 or uint8, got {self._input['dtype'].__name__}")
        if len(out_shape) != 4 or out_shape[0] != 1 or out_shape[3] not in (1, 2):
            raise ConfigError(f"{self.path}: output must be a (1, H, W, 1 or 2) mask, got shape {out_shape}")
        if self._output["dtype"] != np.float32 and self._output["quantization"][0] == 0:
            raise ConfigError(f"{self.path}: output must be float32 or quantised, got {self._output['dtype'].__name__}")
        try:
            self._interpreter.allocate_tensors()
        except RuntimeError as exc:  # a well-formed file whose operators cannot run here
            raise ConfigError(f"{self.path}: the interpreter cannot prepare it: {one_line(exc)}") from None
        self._info = BackendInfo(name=self.name, model_id=model.name,
                                 weights_sha256=hashlib.sha256(data).hexdigest(), device="cpu")

    def __call__(self, clip: VideoClip) -> Matte:
        height, width = clip.frames.shape[1:3]
        # 1. The network's soft foreground probability per frame, at its own resolution: (T, h, w).
        soft = np.stack([self.predict(frame) for frame in clip.frames])
        # 2. Temporal smoothing. Averaging and bilinear resizing are both linear, so smoothing before the
        #    upsampling gives the same result at a fraction of the cost. Edge frames repeat ("nearest").
        #    A clip without a frame rate (fps 0) cannot say how far apart its frames are: no smoothing.
        if self.smooth_s > 0 and clip.fps > 0:
            soft = ndimage.gaussian_filter1d(soft, self.smooth_s * clip.fps, axis=0, mode="nearest")
        # 3. Bilinear upsampling of the SOFT mask to the clip's resolution: the 0.5 contour then falls between
        #    the network's pixels instead of following its blocky grid.
        soft = np.stack([cv2.resize(s, (width, height), interpolation=cv2.INTER_LINEAR) for s in soft])
        # 4. Threshold at 0.5, with a guided-filter soft edge that follows the full-resolution colours.
        if self.refine:
            alpha = soft_edge(clip.frames, soft, radius=self.edge_radius, eps=self.edge_eps)
        else:
            alpha = (soft >= 0.5).astype(np.float32)
        return Matte(alpha=alpha, backend=self._info)

    def predict(self, frame: np.ndarray) -> np.ndarray:
        """(h, w) float32 foreground probability of one (H, W, 3) uint8 frame at the network's resolution."""
        _, in_h, in_w, _ = self._input["shape"]
        # A plain resize of the whole frame: nothing is cropped, so a frame of another aspect ratio is
        # squeezed (a 16:9 frame into a square input makes people look thin); resizing the mask back to the
        # frame's size stretches it back. A model whose input matches the clip's shape avoids the squeeze.
        resized = cv2.resize(frame, (int(in_w), int(in_h)), interpolation=cv2.INTER_AREA)
        self._interpreter.set_tensor(self._input["index"], self._encode(resized)[None])
        self._interpreter.invoke()
        out = self._decode(self._interpreter.get_tensor(self._output["index"])[0])  # (h, w, C)
        if out.shape[-1] == 2:
            logits = out - out.max(axis=-1, keepdims=True)  # a stable softmax over the two classes
            weights = np.exp(logits)
            return (weights[..., FOREGROUND_CHANNEL] / weights.sum(axis=-1)).astype(np.float32)
        return np.clip(out[..., 0], 0.0, 1.0).astype(np.float32)

    def _encode(self, rgb: np.ndarray) -> np.ndarray:
        """The network's input tensor for a uint8 frame: float in [0, 1], or uint8 through the quantisation."""
        if self._input["dtype"] == np.float32:
            return rgb.astype(np.float32) / 255.0
        scale, zero_point = self._input["quantization"]
        if scale == 0:  # unquantised uint8 input: raw pixel values
            return rgb
        # The real value the network expects is the [0, 1] pixel: real = scale * (q - zero_point).
        quantised = np.rint(rgb.astype(np.float32) / 255.0 / scale + zero_point)
        return np.clip(quantised, 0, 255).astype(np.uint8)

    def _decode(self, out: np.ndarray) -> np.ndarray:
        """Float values of an output tensor (a quantised uint8 / int8 output is dequantised)."""
        scale, zero_point = self._output["quantization"]
        if np.issubdtype(out.dtype, np.integer) and scale != 0:
            return (out.astype(np.float32) - zero_point) * scale
        return out.astype(np.float32)
