"""The `rembg:<model | path.onnx>` backend: rembg's salient-object networks run through one onnxruntime session,
batched over a clip's frames, with the device chosen explicitly; weights from rembg's cache, else the model
registry's (`manifests.models`: fetched on first use where the network is allowed)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import cv2
import numpy as np
from PIL import Image

from datagen.matting.base import BackendInfo, Matte
from datagen.matting.refine import soft_edge
from datagen.video_clip import VideoClip
from manifests.errors import ConfigError
from manifests.models import REGISTRY, Access, default_access, ensure, file_sha256

log = logging.getLogger(__name__)

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


@dataclass(frozen=True)
class Preprocess:
    """How one family of rembg sessions feeds its network and reads the output, as in that session's `predict`."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: int  # the network sees a size x size image
    sigmoid: bool = False  # BiRefNet returns logits; rembg applies a sigmoid before its min-max


IMAGENET_MEAN, IMAGENET_STD, UNIT_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (1.0, 1.0, 1.0)
U2NET = Preprocess(IMAGENET_MEAN, IMAGENET_STD, 320)  # also rembg's u2net_custom session, used for a bare path
ISNET = Preprocess((0.5, 0.5, 0.5), UNIT_STD, 1024)
ISNET_ANIME = Preprocess(IMAGENET_MEAN, UNIT_STD, 1024)
BRIA = Preprocess(IMAGENET_MEAN, IMAGENET_STD, 1024)
BIREFNET = Preprocess(IMAGENET_MEAN, IMAGENET_STD, 1024, sigmoid=True)

# rembg session name -> its preprocessing (rembg 2.0.86, sessions/*.py). Left out on purpose: u2net_cloth_seg
# (an argmax over clothing classes, not a foreground matte), sam (needs prompts), the *_custom sessions (a path
# covers them) and withoutbg / atlascloud (they send the image to a web service).
MODELS: dict[str, Preprocess] = {
    "u2net": U2NET,
    "u2netp": U2NET,
    "u2net_human_seg": U2NET,
    "silueta": U2NET,
    "isnet-general-use": ISNET,
    "isnet-anime": ISNET_ANIME,
    "bria-rmbg": BRIA,
    **{name: BIREFNET for name in (
        "birefnet-general", "birefnet-general-lite", "birefnet-general-fp16", "birefnet-portrait",
        "birefnet-dis", "birefnet-hrsod", "birefnet-cod", "birefnet-massive",
    )},
}


@dataclass
class RembgMatting:
    """Mattes the salient object of every frame with a rembg network (no temporal model: frame by frame).

    `model` is a rembg model name or a path to an .onnx file. A name's weights come from rembg's own cache when
    they are there, else from the model registry (cached, or fetched as `access` allows). A file named like a
    known model (`isnet-general-use.onnx`) gets that model's preprocessing, any other file that of rembg's
    u2net_custom session.
    """

    name: ClassVar[str] = "rembg"
    gpu_capable: ClassVar[bool] = True  # scheduled as a GPU actor when the build has GPUs
    spec_option: ClassVar[str] = "model"  # `rembg:isnet-general-use` sets `model`

    model: str = "u2net"
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when onnxruntime offers it, else CPU
    refine: bool = True  # soft_edge the thresholded network mask, as the weight-free backends do
    max_batch: int = 8  # frames per network call, to bound memory: the 1024 px models' activations are large
    edge_radius: int = 4  # guided filter radius (px) and width of the soft band around the edge
    edge_eps: float = 1e-3  # guided filter regulariser
    access: Access = field(default_factory=default_access)  # may registry weights be fetched; the driver's pins

    session: Any = field(init=False, repr=False)  # onnxruntime.InferenceSession, made once per worker
    info: BackendInfo = field(init=False)
    preprocess: Preprocess = field(init=False)
    input_name: str = field(init=False, repr=False)
    output_name: str = field(init=False, repr=False)  # the first output, the one rembg reads
    dynamic_batch: bool = field(init=False)  # False: the network takes one frame per call

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"rembg device must be auto, cpu or cuda, got {self.device!r}")
        if self.max_batch < 1:
            raise ConfigError(f"rembg max_batch must be at least 1, got {self.max_batch}")
        path = self._weights_path()
        model_id = path.name if self.model.endswith(".onnx") else self.model
        self.preprocess = MODELS.get(self.model, MODELS.get(path.stem, U2NET))
        sha = file_sha256(path)
        pin = self.access.pin(f"{self.name}:{self.model}")
        if pin is not None and pin.sha256 != sha:
            raise ConfigError(f"rembg model {self.model!r}: {path} has sha256 {sha[:12]}..., this build pins "
                              f"{pin.sha256[:12]}... (another file than the driver resolved)")
        self.session, device = self._open_session(path)
        self._check_signature()
        self.info = BackendInfo(name=f"{self.name}:{model_id}", model_id=model_id, weights_sha256=sha, device=device)

    def __call__(self, clip: VideoClip) -> Matte:
        height, width = clip.frames.shape[1:3]
        # 1. The network's soft mask at its own resolution, as rembg's `predict` computes it before its uint8 cast.
        small = self.network_masks(clip.frames)  # (T, S, S)
        # 2. Bilinear back to the build size.
        soft = np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in small])
        soft = np.clip(soft, 0.0, 1.0)  # (T, H, W)
        # 3. Interior 1, exterior 0 (threshold 0.5) and a guided-filter band at the edge: the network's own soft
        # edge is blurred by the 320 or 1024 px input, the guide snaps it to the frame's colour edges.
        alpha = soft_edge(clip.frames, soft, radius=self.edge_radius, eps=self.edge_eps) if self.refine else soft
        return Matte(alpha=alpha.astype(np.float32), backend=self.info)

    def network_masks(self, frames: np.ndarray) -> np.ndarray:
        """(T, S, S) float32 in [0, 1]: rembg's prediction for each of the (T, H, W, 3) frames before its resize."""
        step = self.max_batch if self.dynamic_batch else 1
        masks = []
        for start in range(0, len(frames), step):
            batch = np.stack([self._normalise(frame) for frame in frames[start:start + step]])  # (N, 3, S, S)
            (output,) = self.session.run([self.output_name], {self.input_name: batch})
            masks.append(self._postprocess(output[:, 0]))  # (N, S, S): channel 0 of the first output, as rembg
        return np.concatenate(masks)

    def _normalise(self, frame: np.ndarray) -> np.ndarray:
        """(3, S, S) float32, as rembg's `BaseSession.normalize`: a LANCZOS resize, then a division by the
        image's own maximum (not by 255), then mean and std, in float64."""
        size, mean, std = self.preprocess.size, np.array(self.preprocess.mean), np.array(self.preprocess.std)
        image = np.array(Image.fromarray(frame).resize((size, size), Image.Resampling.LANCZOS))
        image = image / max(np.max(image), 1e-6)
        return ((image - mean) / std).transpose(2, 0, 1).astype(np.float32)

    def _postprocess(self, pred: np.ndarray) -> np.ndarray:
        """(N, S, S) raw network output -> (N, S, S) in [0, 1], min-max normalised per image as rembg does."""
        if self.preprocess.sigmoid:
            with np.errstate(over="ignore"):  # exp overflows to inf for very negative logits: sigmoid 0, as wanted
                pred = 1 / (1 + np.exp(-pred))
        low, high = pred.min(axis=(1, 2), keepdims=True), pred.max(axis=(1, 2), keepdims=True)
        spread = high - low
        # A constant output carries no object (rembg would divide 0 by 0 here); call it all background.
        scaled = np.divide(pred - low, spread, out=np.zeros_like(pred), where=spread > 0)
        return np.clip(scaled, 0.0, 1.0).astype(np.float32)

    def _weights_path(self) -> Path:
        """The .onnx file to load: the given path, or the named model's file in rembg's local cache."""
        if self.model.endswith(".onnx"):
            path = Path(self.model).expanduser()
            if not path.is_file():
                raise ConfigError(f"rembg model file {str(path)!r} does not exist")
            return path
        if self.model not in MODELS:
            raise ConfigError(f"unknown rembg model {self.model!r}; known: {', '.join(MODELS)}, or a path to an .onnx")
        found, _ = cached_model(self.model)
        if found is not None:
            return found
        if f"{self.name}:{self.model}" in REGISTRY:
            return ensure(f"{self.name}:{self.model}", self.access).path  # cached, fetched, or one line
        raise ConfigError(f"rembg model {self.model!r} is not in rembg's cache nor in the model registry; fetch it "
                          f"with `rembg d {self.model}`, or pass its path: rembg:/path/to/{self.model}.onnx")

    def _open_session(self, path: Path) -> tuple[Any, str]:
        """One onnxruntime session with explicit providers, and the device it really runs on."""
        import onnxruntime as ort  # lazy, with rembg

        available = ort.get_available_providers()
        if self.device == "cuda" and CUDA not in available:
            raise ConfigError(
                f"rembg device 'cuda' requested, but onnxruntime {ort.__version__} offers only "
                f"{', '.join(available)} (no {CUDA}); install onnxruntime-gpu in place of onnxruntime, "
                "or use device cpu"
            )
        use_cuda = self.device == "cuda" or (self.device == "auto" and CUDA in available)
        # `cuda` names CUDA alone so nothing can fall back quietly; `auto` lets onnxruntime fall back to the CPU.
        providers = [CUDA] if self.device == "cuda" else [CUDA, CPU] if use_cuda else [CPU]
        session = ort.InferenceSession(str(path), providers=providers)
        # onnxruntime lists CUDA whenever its shim is installed, and falls back to the CPU (with a log line only)
        # when the CUDA / cuDNN libraries behind it fail to load; only the session knows what it got.
        active = session.get_providers()
        if use_cuda and CUDA not in active:
            if self.device == "cuda":
                raise ConfigError(
                    f"rembg device 'cuda' requested and onnxruntime lists {CUDA}, but the session could not load it "
                    f"(got {', '.join(active)}; usually missing or mismatched CUDA / cuDNN libraries, see "
                    "onnxruntime's log above); fix the CUDA install or use device cpu"
                )
            log.warning("rembg: onnxruntime lists %s but could not load it; running on the CPU", CUDA)
        return session, "cuda" if CUDA in active else "cpu"

    def _check_signature(self) -> None:
        """The network must take (N, 3, S, S), N dynamic or 1: rembg's sessions feed one S x S image per call."""
        inputs, size = self.session.get_inputs(), self.preprocess.size
        shape = inputs[0].shape  # ints for fixed dimensions, names (or None) for dynamic ones
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise ConfigError(f"rembg model {self.model!r} takes input {shape}, expected (N, 3, {size}, {size})")
        if any(isinstance(dim, int) and dim != size for dim in shape[2:]):
            raise ConfigError(
                f"rembg model {self.model!r} takes {shape[2]}x{shape[3]} images, but rembg feeds this model "
                f"{size}x{size} (a custom .onnx gets u2net_custom's 320x320 unless named like a known model)"
            )
        if isinstance(shape[0], int) and shape[0] != 1:
            raise ConfigError(f"rembg model {self.model!r}: fixed batch {shape[0]}; export it with batch 1 or dynamic")
        self.dynamic_batch = not isinstance(shape[0], int)
        self.input_name, self.output_name = inputs[0].name, self.session.get_outputs()[0].name


def cached_model(model: str) -> tuple[Path | None, str]:
    """The named rembg model's .onnx in rembg's local cache (or None), and where it was looked for; disk only."""
    from rembg.sessions import sessions  # lazy: importing rembg takes seconds

    session_class = sessions.get(model)
    if session_class is None:
        return None, f"(rembg {model!r} is not in the installed rembg; upgrade rembg)"
    filename = f"{model}.onnx"
    if hasattr(session_class, "resolve_existing"):
        # rembg >= 2.0.86 looks in <home>/models/<name>/ (home: U2NET_HOME, else REMBG_HOME or ~/.rembg), then in
        # the legacy flat folder (U2NET_HOME, else ~/.u2net); its sessions would download when both miss.
        found = session_class.resolve_existing(filename)
        where = f"{Path(session_class.model_dir()) / filename} (nor {session_class.legacy_home()}/{filename})"
        return (Path(found) if found else None), where
    # older rembg (Python 3.10 gets one): a single flat folder, U2NET_HOME else ~/.u2net
    expected = Path(session_class.u2net_home()) / filename
    return (expected if expected.is_file() else None), str(expected)


def cache_homes() -> list[Path]:
    """Every folder rembg (old or new) may keep models in; none existing means no cached model at all."""
    env = os.environ
    xdg = env.get("XDG_DATA_HOME")
    homes = [env.get("U2NET_HOME"), env.get("REMBG_HOME"), os.path.join(xdg, "rembg") if xdg else "~/.rembg",
             os.path.join(xdg or "~", ".u2net")]
    return [Path(home).expanduser() for home in homes if home]
