"""The `sam2:<config>[:<checkpoint>]` backend: SAM 2 propagates a first-frame prompt through the clip, in overlapping
chunks so that memory does not grow with clip length, cross-fading the chunks where they overlap."""

from __future__ import annotations

import importlib.util
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image

from datagen.matting.base import BackendInfo, Matte, MattingBackend
from datagen.matting.bgsub import BackgroundSubtraction
from datagen.matting.refine import soft_edge
from datagen.video_clip import VideoClip
from manifests.device import resolve_device
from manifests.errors import ConfigError, InputError, one_line
from manifests.models import RANDOM_SUFFIX, REGISTRY, Access, default_access, ensure, file_sha256

# Short config name -> the config inside the sam2 package (what `build_sam2_video_predictor` composes).
CONFIGS: dict[str, str] = {
    f"{family}_hiera_{size}": f"configs/{family}/{family}_hiera_{size}.yaml"
    for family in ("sam2.1", "sam2")
    for size in ("t", "s", "b+", "l")
}
IMAGE_MEAN, IMAGE_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # sam2's `load_video_frames` defaults
OBJECT_ID = 1  # one object per clip: the foreground

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in clip pixels
Prompt = np.ndarray | Box  # a (H, W) bool mask or a box, for the first frame of a chunk


@dataclass
class Sam2Matting:
    """Tracks one foreground object through a clip with a SAM 2 video predictor.

    `model` is `<config>[:<checkpoint> | :random]`: a short config name (`sam2.1_hiera_t`, `_s`, `_b+`, `_l`, or
    the same for `sam2_hiera_*`) or a config path inside the sam2 package (`configs/sam2.1/sam2.1_hiera_t.yaml`),
    and optionally a SAM 2 checkpoint (`{"model": state_dict}`, loaded by sam2 with `weights_only=True`). Without
    one, the official checkpoint of that config (`manifests.models.REGISTRY`) is loaded from the cache or fetched
    (as `access` allows), else a one-line `ModelUnavailable`. `:random` initialises the network randomly from
    `seed`: for tests and benchmarks only; the matte says so (`random_weights`).

    The prompt on frame 0 is, in this order: the clip's own alpha (a source that carries it); the `prompter`'s
    mask (`rembg+sam2`: a per-frame backend finds the object, SAM 2 keeps it consistent over time); else a box
    around frame 0 of a bgsub matte of the first chunk, or the middle half of the frame when bgsub finds nothing.
    """

    name: ClassVar[str] = "sam2"
    gpu_capable: ClassVar[bool] = True  # scheduled as a GPU actor when the build has GPUs
    spec_option: ClassVar[str] = "model"  # `sam2:sam2.1_hiera_t:/w/sam2.1_hiera_tiny.pt` sets `model`

    model: str = "sam2.1_hiera_t"
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when torch sees a GPU, else CPU
    # SAM 2's state holds every frame it was given as a (3, S, S) float tensor (12 MB at S = 1024) plus per-frame
    # memories: a chunk bounds that. Each chunk after the first is prompted with the mask its predecessor made for
    # its first frame, and the `overlap` frames both chunks cover are cross-faded; more overlap costs
    # chunk / (chunk - overlap) times the compute.
    chunk: int = 16
    overlap: int = 4
    prompter: MattingBackend | None = None  # the first backend of `<spec>+sam2`, set by `load_matting`
    refine: bool = True  # soft_edge the thresholded mask, as the other backends do
    edge_radius: int = 4  # guided filter radius (px) and width of the soft band around the edge
    edge_eps: float = 1e-3  # guided filter regulariser
    seed: int = 0  # `:random` initialisation: same seed, same network
    access: Access = field(default_factory=default_access)  # may the official checkpoint be fetched; the pins
    hydra_overrides: tuple[str, ...] = ()  # extra overrides for the config; tests shrink `++model.image_size`

    predictor: Any = field(init=False, repr=False)  # sam2.sam2_video_predictor.SAM2VideoPredictor
    info: BackendInfo = field(init=False)

    def __post_init__(self) -> None:
        if self.chunk < 2:
            raise ConfigError(f"sam2 chunk must be at least 2 frames, got {self.chunk}")
        if not 1 <= self.overlap < self.chunk:
            # Without an overlapping frame the next chunk has no mask to be prompted with.
            raise ConfigError(f"sam2 overlap must be at least 1 and below chunk ({self.chunk}), got {self.overlap}")
        config_name, _, checkpoint = self.model.partition(":")
        config = _config_path(config_name)
        device = resolve_device(self.device)
        short = Path(config).stem
        if checkpoint == RANDOM_SUFFIX[1:]:  # tests and benchmarks only: the spelling says so
            self.predictor = self._build(config, None, device)
            self.info = BackendInfo(name=f"{self.name}:{short}{RANDOM_SUFFIX}", model_id=short, device=device,
                                    random_weights=True)
            return
        revision = None
        if checkpoint:
            checkpoint_path = _checkpoint_path(checkpoint)
        elif f"{self.name}:{short}" in REGISTRY:
            fetched = ensure(f"{self.name}:{short}", self.access)  # cached, else fetched (if allowed), else one line
            checkpoint_path, revision = fetched.path, fetched.pin.revision
        else:
            raise ConfigError(f"sam2 config {config_name!r} has no official checkpoint in the model registry; pass "
                              f"one (sam2:{config_name}:/path/to/checkpoint.pt)")
        self.predictor = self._build(config, checkpoint_path, device)
        self.info = BackendInfo(name=f"{self.name}:{short}", model_id=short, device=device, revision=revision,
                                weights_sha256=file_sha256(checkpoint_path))

    def __call__(self, clip: VideoClip) -> Matte:
        # 1. What to track: a mask or box on frame 0, and who made it.
        prompt, info = self._first_prompt(clip)
        # 2. SAM 2's foreground probability, chunk by chunk.
        soft = self.soft_masks(clip.frames, prompt)  # (T, H, W)
        # 3. Interior 1, exterior 0 (threshold 0.5) and a guided-filter band at the edge.
        alpha = soft_edge(clip.frames, soft, radius=self.edge_radius, eps=self.edge_eps) if self.refine else soft
        return Matte(alpha=alpha.astype(np.float32), backend=info)

    def soft_masks(self, frames: np.ndarray, prompt: Prompt) -> np.ndarray:
        """(T, H, W) float32 foreground probability of the (T, H, W, 3) frames, the object given on frame 0."""
        count = len(frames)
        soft = np.empty(frames.shape[:3], np.float32)
        for start, stop in chunk_ranges(count, self.chunk, self.overlap):
            probs = self._propagate_chunk(frames[start:stop], prompt)  # (stop - start, H, W)
            if stop < count:  # the next chunk starts `overlap` frames before this one ends
                prompt = probs[stop - start - self.overlap] > 0.5
            if start > 0:
                probs[:self.overlap] = cross_fade(soft[start:start + self.overlap], probs[:self.overlap])
            soft[start:stop] = probs
        return soft

    def _propagate_chunk(self, frames: np.ndarray, prompt: Prompt) -> np.ndarray:
        """(N, H, W) float32 probabilities: `prompt` on frame 0 of the (N, H, W, 3) frames, propagated forward."""
        import torch  # lazy: importing torch takes seconds, and only the learned backends need it

        with torch.inference_mode():
            state = self._init_state(frames)
            if isinstance(prompt, np.ndarray):
                self.predictor.add_new_mask(state, frame_idx=0, obj_id=OBJECT_ID, mask=prompt)
            else:
                self.predictor.add_new_points_or_box(state, frame_idx=0, obj_id=OBJECT_ID,
                                                     box=np.asarray(prompt, np.float32))
            probs = np.empty(frames.shape[:3], np.float32)
            for index, _, logits in self.predictor.propagate_in_video(state):  # logits: (1, 1, H, W)
                probs[index] = torch.sigmoid(logits[0, 0]).cpu().numpy()
            # The state holds the chunk's frames, features and memories; drop them before the next chunk.
            self.predictor.reset_state(state)
        return probs

    def _init_state(self, frames: np.ndarray) -> dict:
        """SAM2VideoPredictor.init_state (sam2 1.1) for in-memory frames: it reads only JPEG folders or mp4 files,
        and JPEG would blur the frames a second time."""
        device = self.predictor.device
        state: dict[str, Any] = {
            "images": self._preprocess(frames).to(device),  # (N, 3, S, S)
            "num_frames": len(frames),
            "offload_video_to_cpu": False,
            "offload_state_to_cpu": False,
            "video_height": frames.shape[1],  # SAM 2 returns its masks at this size
            "video_width": frames.shape[2],
            "device": device,
            "storage_device": device,
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            "cached_features": {},
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
        }
        self.predictor._get_image_feature(state, frame_idx=0, batch_size=1)  # init_state warms frame 0 up too
        return state

    def _preprocess(self, frames: np.ndarray) -> Any:
        """(N, 3, S, S) float32 torch tensor, as sam2's `_load_img_as_tensor` and `load_video_frames`: PIL's default
        (bicubic) resize to S x S, / 255 in float64 then float32, then mean and std."""
        import torch

        size = self.predictor.image_size
        images = torch.empty(len(frames), 3, size, size, dtype=torch.float32)
        for index, frame in enumerate(frames):  # one float64 frame at a time: a whole chunk would be 8 bytes a value
            resized = np.asarray(Image.fromarray(frame).resize((size, size))) / 255.0
            images[index] = torch.from_numpy(resized).permute(2, 0, 1)
        images -= torch.tensor(IMAGE_MEAN)[:, None, None]
        images /= torch.tensor(IMAGE_STD)[:, None, None]
        return images

    def _first_prompt(self, clip: VideoClip) -> tuple[Prompt, BackendInfo]:
        """The prompt for frame 0 and the BackendInfo of the run that uses it."""
        if clip.alpha is not None:
            return _object_mask(clip.alpha[0] >= 0.5, "the clip's alpha"), self.info
        head = clip.frames[:self.chunk]  # a temporal prompter (bgsub) needs frames; more would cost memory
        if self.prompter is not None:
            try:
                matte = self.prompter(VideoClip(frames=head))
            except InputError as exc:
                raise InputError(f"sam2 prompt from {self.prompter.name}: {one_line(exc)}") from exc
            return _object_mask(matte.alpha[0] >= 0.5, f"the {self.prompter.name} mask"), self._combined(matte.backend)
        return self._box(head), self.info

    def _box(self, frames: np.ndarray) -> Box:
        """Around what moves in frame 0 against a static background, else the middle half of the frame."""
        height, width = frames.shape[1:3]
        try:
            moving = BackgroundSubtraction()(VideoClip(frames=frames)).alpha[0] >= 0.5
        except InputError:  # too few frames, or a moving camera
            moving = np.zeros((height, width), bool)
        if not moving.any():
            return width / 4, height / 4, 3 * width / 4, 3 * height / 4
        rows, cols = np.nonzero(moving)
        return float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)

    def _combined(self, first: BackendInfo) -> BackendInfo:
        """`rembg+sam2`, model `u2net+sam2.1_hiera_t`: each part names its backend; weights `none` where absent."""
        prompter_name = self.prompter.name
        shas = (first.weights_sha256, self.info.weights_sha256)
        revisions = (first.revision, self.info.revision)
        return BackendInfo(
            name=f"{prompter_name}+{self.name}",
            revision=None if revisions == (None, None) else "+".join(rev or "none" for rev in revisions),
            random_weights=first.random_weights or self.info.random_weights,
            model_id=f"{first.model_id or prompter_name}+{self.info.model_id}",
            weights_sha256=None if shas == (None, None) else "+".join(sha or "none" for sha in shas),
            device=self.info.device if first.device == self.info.device else f"{first.device}+{self.info.device}",
        )

    def _build(self, config: str, checkpoint: Path | None, device: str) -> Any:
        """The video predictor; without a checkpoint (`:random` only) randomly initialised from `seed`."""
        import torch
        from sam2.build_sam import build_sam2_video_predictor  # lazy: composes the config through hydra

        try:
            with torch.random.fork_rng(devices=[]):  # seed the random initialisation without touching the caller's RNG
                torch.manual_seed(self.seed)
                predictor = build_sam2_video_predictor(config, ckpt_path=str(checkpoint) if checkpoint else None,
                                                       device=device, hydra_overrides_extra=list(self.hydra_overrides))
        except (RuntimeError, KeyError, pickle.UnpicklingError) as exc:
            if checkpoint is None:
                raise
            # sam2 logs the missing / unexpected keys and raises an empty RuntimeError.
            raise ConfigError(f"sam2 checkpoint {str(checkpoint)!r} does not load into {config}: {one_line(exc)} "
                              "(a SAM 2 checkpoint {'model': state_dict} of this config; see the keys logged above)"
                              ) from None
        if importlib.util.find_spec("sam2._C") is None:
            # Without sam2's CUDA extension its hole filling warns and returns the mask unchanged on every frame.
            predictor.fill_hole_area = 0
        return predictor


def chunk_ranges(count: int, chunk: int, overlap: int) -> list[tuple[int, int]]:
    """[start, stop) of each chunk of `chunk` frames covering `count` frames, consecutive ones sharing `overlap`."""
    ranges, start = [], 0
    while True:
        stop = min(start + chunk, count)
        ranges.append((start, stop))
        if stop == count:
            return ranges
        start = stop - overlap


def cross_fade(previous: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Blend the (N, ...) masks two chunks made for the N frames they share. The later chunk's first frame is
    its prompt given back (the earlier chunk's mask, thresholded), so it gets weight 0; after it the later chunk's
    weight grows linearly, 1 / N ... (N - 1) / N, and the frame after the overlap is the later chunk's alone: a
    disagreement between the chunks is spread over N steps."""
    weights = np.arange(len(current), dtype=np.float32) / len(current)
    weights = weights.reshape((-1,) + (1,) * (current.ndim - 1))
    return (1 - weights) * previous + weights * current


def _object_mask(mask: np.ndarray, source: str) -> np.ndarray:
    if not mask.any():
        raise InputError(f"sam2: {source} is empty on frame 0, so there is no object to track")
    return mask


def _config_path(name: str) -> str:
    """The config inside the sam2 package for a short name or a package path."""
    if name in CONFIGS:
        return CONFIGS[name]
    if name.endswith(".yaml") and (resources.files("sam2") / name).is_file():
        return name
    raise ConfigError(f"unknown sam2 config {name!r}; known: {', '.join(CONFIGS)}, or a path inside the sam2 "
                      "package such as configs/sam2.1/sam2.1_hiera_t.yaml")


def _checkpoint_path(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(f"sam2 checkpoint {str(path)!r} does not exist (leave it out to use the official one, "
                          "fetched on first use)")
    return path

