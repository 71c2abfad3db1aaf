"""Model presets (`toy`, `small`, `cogvideox-2b`), the training configuration and the sampler settings, as frozen
dataclasses. Imports no torch: the command line reads its defaults from here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from pathlib import Path

from layerflow_model.layout import Layout, Task, slots_of
from manifests.errors import ConfigError
from manifests.layers import SampleKind


class Space(str, Enum):
    PIXEL = "pixel"  # the diffusion runs on pixels (toy)
    COGVIDEOX_VAE = "cogvideox-vae"  # the CogVideoX 3D VAE of the `pretrained` folder


@dataclass(frozen=True)
class Geometry:
    """How a space shrinks a clip: pixels per latent pixel (each side), frames per latent frame, channels."""

    spatial_ratio: int
    temporal_ratio: int
    channels: int

    def latent_frames(self, frames: int) -> int:
        return -(-frames // self.temporal_ratio)  # ceil(frames / temporal_ratio)


GEOMETRY: dict[Space, Geometry] = {
    Space.PIXEL: Geometry(spatial_ratio=1, temporal_ratio=1, channels=3),
    # The CogVideoX-2b VAE (vae/config.json): 8x8 pixels and 4 frames per latent, 16 latent channels.
    Space.COGVIDEOX_VAE: Geometry(spatial_ratio=8, temporal_ratio=4, channels=16),
}


class TextModel(str, Enum):
    TINY_T5 = "tiny-t5"  # a T5 encoder built from config with a byte-level tokenizer (no download)
    T5 = "t5"  # T5EncoderModel + tokenizer from the `pretrained` folder (CogVideoX-2b: T5-v1.1-XXL)


class Positions(str, Enum):
    CONTINUOUS = "continuous"  # the original: time runs on across sub-clips, visual tokens get no layer signal
    PER_LAYER = "per-layer"  # time restarts in each sub-clip, plus a learned sub-clip embedding (deviation)


class Stage(str, Enum):
    BASE = "base"  # the whole model (or every `base_every`-th block) on video samples
    MOTION = "motion"  # the `motion` LoRA on frozen clips
    CONTENT = "content"  # the `content` LoRA on frozen images (motion on) and videos (motion off)


class Precision(str, Enum):
    AUTO = "auto"  # bf16 autocast on a GPU, fp32 on the CPU
    FP32 = "fp32"
    BF16 = "bf16"


class EncoderDtype(str, Enum):
    """The dtype the frozen encoders (T5, VAE) load in; their outputs are float32 either way."""

    FP32 = "fp32"
    BF16 = "bf16"  # halves T5-XXL (about 19 GB in fp32) and the VAE; works on the CPU too
    FP16 = "fp16"


class Sampler(str, Enum):
    DDIM = "ddim"
    DPM = "dpm"  # DPM-Solver++(2M), as CogVideoX samples


@dataclass(frozen=True)
class ModelConfig:
    """Everything that decides the network's shape; stored inside every checkpoint."""

    preset: str
    layout: Layout = Layout.RGBA
    frames: int = 2  # frames per layer sub-clip (pixel frames)
    height: int = 32
    width: int = 32
    space: Space = Space.PIXEL
    text: TextModel = TextModel.TINY_T5
    text_tokens: int = 16  # tokens per prompt; the text block is 3 * text_tokens long
    pretrained: str | None = None  # a local CogVideoX-2b diffusers folder (tokenizer/, text_encoder/, vae/, ...)
    load_transformer: bool = False  # start the transformer from `pretrained/transformer` (else random init)
    # The transformer (diffusers CogVideoXTransformer3DModel arguments).
    heads: int = 4
    head_dim: int = 32
    depth: int = 4
    patch_size: int = 4
    time_embed_dim: int = 128
    spatial_interpolation_scale: float = 1.0
    positions: Positions = Positions.PER_LAYER  # see model.LayerPatchEmbed; CONTINUOUS for pretrained weights
    # The tiny T5 (TextModel.TINY_T5 only).
    tiny_t5_d_model: int = 64
    tiny_t5_layers: int = 2
    # LoRA adapters on the attention projections (q, k, v, out) of every `lora_every`-th block.
    motion_rank: int = 8
    content_rank: int = 32
    lora_every: int = 1
    # rsLoRA: an adapter's output is scaled by lora_alpha / sqrt(rank), so the step of a rank-256 adapter is not 16x
    # a rank-1 one's at the same learning rate. 1.0 with the default lr 3e-4 gives the cogvideox-2b content adapter
    # (rank 256, scaling 1/16) the original's effective step: lr x scaling = 1.9e-5 vs 5e-3 x 1/256 = 2.0e-5 (notes §7).
    lora_alpha: float = 1.0
    base_every: int = 1  # the base stage trains every `base_every`-th block (1: the whole model)
    # The CogVideoX noise schedule: scaled-linear betas, zero terminal SNR, then this SNR shift.
    snr_shift: float = 1.0
    prompt_dropout: float = 0.1  # each layer's prompt is zeroed independently with this probability
    # All three prompts of a sample are zeroed together with this probability: the unconditional branch of CFG
    # (every prompt zero) is then trained on this fraction of samples, not on prompt_dropout ** 3 (0.1 %).
    joint_prompt_dropout: float = 0.1
    given_embedding: bool = True  # a learned vector on the visual tokens of the given (clean) frames
    # Pixel-aligned conditioning (a deviation, off for the CogVideoX presets): every visual token also gets a learned
    # projection of the given slots' patch embeddings at its own frame and pixel (see `model.LayerPatchEmbed`).
    given_projection: bool = False
    # Recompute block activations in backward (every stage of this model; `--gradient-checkpointing` turns it on for
    # others). On for the CogVideoX-2b presets, whose activations would not fit one GPU otherwise.
    gradient_checkpointing: bool = False
    encoder_dtype: EncoderDtype = EncoderDtype.FP32  # bf16 for the CogVideoX-2b presets (see `EncoderDtype`)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layout", Layout(self.layout))
        try:
            object.__setattr__(self, "encoder_dtype", EncoderDtype(self.encoder_dtype))
        except ValueError:
            raise ConfigError(f"encoder_dtype: fp32, bf16 or fp16, got {self.encoder_dtype!r}") from None
        object.__setattr__(self, "space", Space(self.space))
        object.__setattr__(self, "text", TextModel(self.text))
        object.__setattr__(self, "positions", Positions(self.positions))
        for name in ("frames", "height", "width", "heads", "head_dim", "depth", "patch_size", "text_tokens",
                     "motion_rank", "content_rank", "lora_every", "base_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        ratio = self.spatial_ratio * self.patch_size
        if self.height % ratio or self.width % ratio:
            raise ConfigError(f"height and width must be multiples of {ratio} (VAE ratio x patch size), "
                              f"got {self.height}x{self.width}")
        if self.space is Space.COGVIDEOX_VAE and self.frames != 1 and self.frames % 8:
            # Its decoder upsamples time in pairs: only 1 and 8k frames come back as many as went in.
            raise ConfigError(f"frames: the CogVideoX VAE needs 1 or a multiple of 8 frames per layer, "
                              f"got {self.frames}")
        for name in ("prompt_dropout", "joint_prompt_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}: must be in [0, 1), got {getattr(self, name)}")
        if self.lora_alpha <= 0:
            raise ConfigError(f"lora_alpha: must be > 0, got {self.lora_alpha}")

    def pretrained_folder(self) -> Path:
        """The local CogVideoX-2b folder this preset needs (checked when the model is built, not before)."""
        if not self.pretrained:
            raise ConfigError(f"preset {self.preset!r} needs pretrained: a local CogVideoX-2b diffusers folder "
                              "(--pretrained DIR with tokenizer/, text_encoder/, vae/ and transformer/)")
        return Path(self.pretrained)

    @property
    def needs_pretrained(self) -> bool:
        return self.space is Space.COGVIDEOX_VAE or self.text is TextModel.T5 or self.load_transformer

    @property
    def geometry(self) -> Geometry:
        return GEOMETRY[self.space]

    @property
    def spatial_ratio(self) -> int:
        return self.geometry.spatial_ratio

    @property
    def latent_frames(self) -> int:
        """Latent frames per layer sub-clip (each sub-clip is encoded on its own)."""
        return self.geometry.latent_frames(self.frames)

    @property
    def latent_channels(self) -> int:
        return self.geometry.channels

    @property
    def width_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def text_length(self) -> int:
        return 3 * self.text_tokens

    def tokens(self) -> int:
        """Sequence length of one sample: text tokens plus visual tokens of every sub-clip (given ones too)."""
        per_frame = (self.height // self.spatial_ratio // self.patch_size) * (
            self.width // self.spatial_ratio // self.patch_size)
        return self.text_length + len(slots_of(self.layout)) * self.latent_frames * per_frame

    def to_dict(self) -> dict:
        return {k: (v.value if isinstance(v, Enum) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model config field(s): {', '.join(unknown)}")
        return cls(**data)


PRESETS: dict[str, ModelConfig] = {
    # 2 CPU cores in minutes: 32x32 pixels, 2 frames per layer, 512 visual tokens, 1.7 M parameters. Two
    # frames, not four: at the same CPU time the model takes twice the steps. Two deviations, measured on held-out
    # decomposition (docs/toy-model.md): the given slots projected onto every slot (`given_projection`; without it
    # the toy does not learn to find the object in the blend within the CPU budget), and an SNR shift of 2 (more
    # of the training at high noise, where the alpha must come from the blend).
    "toy": ModelConfig(preset="toy", given_projection=True, snr_shift=2.0),
    # One GPU: 256x256, 16 frames per layer through the CogVideoX VAE (4 latent frames each, 32x32 latents),
    # a 768-wide, 12-deep transformer trained from scratch, T5-XXL prompts of 64 tokens.
    "small": ModelConfig(preset="small", frames=16, height=256, width=256, space=Space.COGVIDEOX_VAE,
                         text=TextModel.T5, text_tokens=64, heads=12, head_dim=64, depth=12,
                         patch_size=2, time_embed_dim=512, content_rank=64, snr_shift=1.0),
    # The original's backbone: CogVideoX-2b at 480x720, 16 frames per layer, LoRAs in every 6th block.
    "cogvideox-2b": ModelConfig(preset="cogvideox-2b", frames=16, height=480, width=720,
                                space=Space.COGVIDEOX_VAE, text=TextModel.T5, text_tokens=226,
                                load_transformer=True, heads=30, head_dim=64, depth=30, patch_size=2,
                                time_embed_dim=512, spatial_interpolation_scale=1.875, content_rank=256,
                                lora_every=6, base_every=6, snr_shift=3.0, positions=Positions.CONTINUOUS,
                                gradient_checkpointing=True, encoder_dtype=EncoderDtype.BF16),
}
# The same backbone at 320x480 (40x60 latents, 600 tokens per latent frame instead of 1350), as the original's debug
# shapes suggest some of its training ran (notes §9.2). The sin-cos scale stays the pretrained 1.875, as diffusers'
# CogVideoX pipelines keep it at every resolution.
PRESETS["cogvideox-2b-320x480"] = replace(PRESETS["cogvideox-2b"], preset="cogvideox-2b-320x480", height=320,
                                          width=480)


def preset(name: str, **overrides) -> ModelConfig:
    """A preset with some fields replaced (e.g. `pretrained=DIR`, `depth=2`)."""
    if name not in PRESETS:
        raise ConfigError(f"preset: unknown {name!r}; choose one of {', '.join(PRESETS)}")
    base = PRESETS[name]
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


DEFAULT_PRESET = "toy"
Preset = Enum("Preset", {name.upper().replace("-", "_"): name for name in PRESETS}, type=str)  # the choices
Preset.__doc__ = "A model preset (see `PRESETS`)."

DEFAULT_TASK_WEIGHTS: dict[str, float] = {task.value: 1.0 for task in Task}


def parse_weights(text: str, option: str = "--tasks", example: str = "generate=1,decompose=2") -> dict[str, float]:
    """`generate=1,decompose=2` -> {"generate": 1.0, "decompose": 2.0} (`--tasks`, `--mix`); TrainConfig checks the
    names."""
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"{option}: {part!r} is not name=weight (e.g. {example})") from None
    return weights


def parse_task_weights(text: str) -> dict[str, float]:
    return parse_weights(text, "--tasks", "generate=1,decompose=2")


MIX_EXAMPLE = "video_copy_paste=1,video_decomposed=1,image_frozen=1"


def parse_mix(text: str | dict[str, float] | None) -> dict[str, float] | None:
    """`--mix kind=weight,...` -> {kind: weight}, the names checked against this version's `SampleKind`."""
    if text is None:
        return None
    weights = text if isinstance(text, dict) else parse_weights(text, "--mix", MIX_EXAMPLE)
    kinds = {k.value for k in SampleKind}
    unknown = sorted(set(weights) - kinds)
    if unknown:
        raise ConfigError(f"mix: unknown sample kind(s) {', '.join(unknown)}; use {', '.join(sorted(kinds))}")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ConfigError(f"mix: need non-negative weights with a positive sum, got {weights}")
    return dict(weights)


@dataclass(frozen=True)
class TrainConfig:
    """One training run (one stage); written as `config.json` into every checkpoint with the model config."""

    manifest: str
    out: str
    stage: Stage = Stage.BASE
    init: str | None = None  # checkpoint of the previous stage (motion and content start from one)
    steps: int = 1000
    batch_size: int = 4
    lr: float = 3e-4
    warmup: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema: float | None = None  # EMA decay of the trained parameters (e.g. 0.999); None: no EMA
    # The EMA decay at step k is min(ema, (1 + k) / (10 + k)): it follows the weights closely at first, so a short
    # stage (a 150-step LoRA) does not ship an EMA that is still mostly the untrained start.
    ema_warmup: bool = True
    checkpoint_every: int = 500
    seed: int = 0
    task_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TASK_WEIGHTS))
    # Sample kinds drawn, by weight ({kind: weight} or "kind=weight,..."); a stage ignores the kinds it does not use
    # and the manifest lacks. None: every kind the stage uses, in proportion to its kept samples.
    mix: dict[str, float] | None = None
    split: str = "train"
    workers: int = 1  # data-parallel workers (Ray Train) when > 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Precision = Precision.AUTO
    gradient_checkpointing: bool = False
    cache_dir: str | None = None  # latent and text-embedding cache (GPU presets)
    pretrained: str | None = None  # this machine's CogVideoX-2b folder, if the checkpoint's moved
    allow_empty_captions: bool = False  # train even if no kept sample has a caption (every prompt empty)
    # Gradient accumulation: a step's batch is batch_size x grad_accum samples per worker, run as grad_accum
    # micro-batches of batch_size; the optimizer steps once per step, on the mean loss.
    grad_accum: int = 1
    loader_workers: int = 0  # DataLoader worker processes decoding the next steps' clips (0: in this process)
    prefetch: int = 2  # steps each loader worker decodes ahead
    # Encode every clip crop and prompt the run can draw into cache_dir before the first step (VAE posteriors and
    # T5 embeddings, keyed by sample, crop and encoder), so the steps read them instead of running the encoders.
    precompute: bool = False
    # Video crops start at multiples of crop_stride frames (1: any frame). A coarser grid means fewer distinct crops
    # for precompute to encode (e.g. the clip's frames per layer: non-overlapping windows).
    crop_stride: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage", Stage(self.stage))
        object.__setattr__(self, "mix", parse_mix(self.mix))
        try:
            object.__setattr__(self, "precision", Precision(self.precision))
        except ValueError:
            raise ConfigError(f"precision: auto, fp32 or bf16, got {self.precision!r}") from None
        for name in ("steps", "batch_size", "checkpoint_every", "workers", "grad_accum", "prefetch", "crop_stride"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.loader_workers < 0:
            raise ConfigError(f"loader_workers: must be >= 0, got {self.loader_workers}")
        if self.precompute and not self.cache_dir:
            raise ConfigError("precompute: needs cache_dir, the folder the encoder outputs are written to")
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")
        if self.warmup < 0:
            raise ConfigError(f"warmup: must be >= 0, got {self.warmup}")
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ConfigError(f"ema: must be in (0, 1), got {self.ema}")
        unknown = sorted(set(self.task_weights) - {t.value for t in Task})
        if unknown:
            names = ", ".join(t.value for t in Task)
            raise ConfigError(f"task_weights: unknown task(s) {', '.join(unknown)}; use {names}")
        if any(w < 0 for w in self.task_weights.values()) or sum(self.task_weights.values()) <= 0:
            raise ConfigError(f"task_weights: need non-negative weights with a positive sum, got {self.task_weights}")
        if self.stage is not Stage.BASE and not self.init:
            raise ConfigError(f"init: the {self.stage.value} stage starts from a checkpoint of the previous stage")

    def to_dict(self) -> dict:
        return {k: (v.value if isinstance(v, Enum) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        return cls(**data)


EVAL_CFG = 3.0  # the guidance scale `eval` samples with by default: lower than sampling's, for fidelity to the input


@dataclass(frozen=True)
class SampleSettings:
    """How `sample` and `eval` denoise: steps, guidance scale, sampler and noise seed."""

    steps: int = 25
    cfg: float = 5.0
    sampler: Sampler = Sampler.DDIM
    seed: int = 0
    precision: Precision = Precision.AUTO  # the denoiser runs under bf16 autocast on a GPU, fp32 on the CPU

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", Precision(self.precision))
        if self.steps < 1:
            raise ConfigError(f"steps: must be >= 1, got {self.steps}")
        if self.cfg < 0:
            raise ConfigError(f"cfg: must be >= 0, got {self.cfg}")
        object.__setattr__(self, "sampler", Sampler(self.sampler))
