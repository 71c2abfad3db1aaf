"""`layerflow-data doctor`: can this machine run the build it is asked for? Each check says what it found, and
a failed one says in one line what to do about it.

Checks, in order: codecs (H.264 encode and decode through PyAV and decord, VP9 with alpha both ways), devices
(torch, onnxruntime execution providers), the requested backends (matting, captioner, CLIP weights) and which
learned backends have weights here, and the Ray resources against what the build's stages request.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datagen.config import BuildConfig
from datagen.preflight import learned_stages, load_backend
from datagen.scheduling import Resources, StageName, plan_stages
from manifests.errors import ConfigError, one_line

PROBE_FRAMES, PROBE_SIZE = 4, 32
PIXEL_TOLERANCE = 12.0  # mean absolute error (0..255) a lossy H.264 round trip of the probe stays under


@dataclass(frozen=True)
class Check:
    """One finding. `required` checks decide whether the requested build can run; the others inform."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True

    def line(self) -> str:
        status = "ok  " if self.ok else ("FAIL" if self.required else "warn")
        text = f"{status}  {self.name:<22} {self.detail}"
        return text + (f"  -> {self.fix}" if not self.ok and self.fix else "")


@dataclass(frozen=True)
class Request:
    """What the user wants to run: the build's backends, where, and on what."""

    config: BuildConfig  # its `device` is what the learned backends are asked to run on
    ray_address: str | None = None
    num_cpus: int | None = None
    no_ray: bool = False
    resources: Resources = field(default_factory=Resources)  # --gpus and the per-stage settings


def diagnose(request: Request) -> list[Check]:
    with tempfile.TemporaryDirectory(prefix="layerflow-doctor-") as tmp:
        checks = codec_checks(Path(tmp))
    return checks + device_checks(request.config) + backend_checks(request.config) + ray_checks(request)


def can_run(checks: list[Check]) -> bool:
    return all(check.ok for check in checks if check.required)


def _probe(name: str, run: Callable[[], str], fix: str, required: bool = True) -> Check:
    """Run one probe; any exception is the finding (a doctor must not crash on what it diagnoses)."""
    try:
        return Check(name, True, run(), required=required)
    except Exception as exc:  # the probe's job is to turn failures into findings
        return Check(name, False, one_line(exc), fix, required)


# Codecs -------------------------------------------------------------------------------------------------------


def _probe_frames() -> np.ndarray:
    """(T, H, W, 3) uint8: smooth colour ramps that move a little from frame to frame."""
    yy, xx = np.mgrid[:PROBE_SIZE, :PROBE_SIZE].astype(np.float32)
    frames = [np.stack([xx * 8 + 4 * t, yy * 8, (xx + yy) * 4 + 8 * t], axis=-1) for t in range(PROBE_FRAMES)]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def codec_checks(tmp: Path) -> list[Check]:
    from manifests import video_io

    frames = _probe_frames()
    mp4, webm = tmp / "probe.mp4", tmp / "probe.webm"

    def encode_h264() -> str:
        video_io.write_rgb_video(mp4, frames, 8.0)
        return f"PyAV {_version('av')} wrote {PROBE_FRAMES} frames with libx264"

    def decode_h264() -> str:
        import decord

        decoded = decord.VideoReader(str(mp4), num_threads=1).get_batch(list(range(PROBE_FRAMES))).asnumpy()
        error = float(np.abs(decoded.astype(np.float32) - frames).mean())
        if decoded.shape != frames.shape or error > PIXEL_TOLERANCE:
            raise ValueError(f"decord read {decoded.shape} frames {error:.1f} levels off the {frames.shape} written")
        return f"decord {decord.__version__} read them back (mean error {error:.1f}/255)"

    def vp9_alpha() -> str:
        alpha = np.linspace(0, 255, PROBE_SIZE, dtype=np.float32)[None, None, :].repeat(PROBE_SIZE, 1)
        rgba = np.concatenate([frames, np.broadcast_to(alpha, (PROBE_FRAMES, PROBE_SIZE, PROBE_SIZE))[..., None]
                               .astype(np.uint8)], axis=-1)
        video_io.write_rgba_video(webm, rgba, 8.0)
        back = video_io.read_video(webm, "rgba")
        error = float(np.abs(back[..., 3].astype(np.float32) - rgba[..., 3]).mean())
        if back.shape != rgba.shape or error > 1.0:
            raise ValueError(f"the alpha plane came back {error:.1f} levels off (the decoder dropped it?)")
        return "libvpx-vp9 wrote and read back RGBA (lossless alpha)"

    h264 = _probe("h264 encode", encode_h264, "install PyAV wheels with libx264 (pip install --force-reinstall av)")
    checks = [h264]
    if h264.ok:
        checks.append(_probe("h264 decode (decord)", decode_h264,
                             "pip install decord (builds fall back to PyAV, slower on long videos)", required=False))
    checks.append(_probe("vp9 alpha (webm)", vp9_alpha,
                         "PyAV's FFmpeg lacks libvpx: RGBA sources and `sample` WebM output will fail",
                         required=False))
    return checks


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "?"


# Devices ------------------------------------------------------------------------------------------------------


def device_checks(config: BuildConfig) -> list[Check]:
    import torch

    from manifests.device import torch_build

    wants_gpu = config.device == "cuda"
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        torch_check = Check("torch", True, f"torch {torch.__version__}, CUDA {torch.version.cuda}: {names}")
    else:
        torch_check = Check("torch", not wants_gpu, f"{torch_build()}, no CUDA device visible",
                            "--device cuda was asked for: run on a machine with a GPU, or use --device cpu",
                            required=wants_gpu)
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
        has_cuda = "CUDAExecutionProvider" in providers
        # Informational: a backend that needs onnxruntime on the GPU (rembg) fails the `matting` check itself.
        onnx_check = Check("onnxruntime", has_cuda or not wants_gpu,
                           f"onnxruntime {onnxruntime.__version__}: {', '.join(providers)}",
                           "pip install onnxruntime-gpu (matching your CUDA), else rembg runs on --device cpu only",
                           required=False)
    except ImportError as exc:
        onnx_check = Check("onnxruntime", False, one_line(exc), "pip install onnxruntime", required=False)
    return [torch_check, onnx_check]


# Backends -----------------------------------------------------------------------------------------------------


def backend_checks(config: BuildConfig) -> list[Check]:
    from filters.clip import resolve_clip

    def matting() -> str:
        backend = load_backend(StageName.MATTE, config, config.device)
        return f"{config.matting} loads ({type(backend).__name__})"

    def captioner() -> str:
        load_backend(StageName.CAPTION, config, config.device)
        return f"{config.captioner} loads"

    checks = [
        _probe("matting", matting, "pick a backend listed in `layerflow-data build --help` or fix its weights path"),
        _probe("captioner", captioner, "pick a captioner listed in `layerflow-data build --help`"),
    ]
    clip = resolve_clip(config.clip)
    checks.append(Check("clip scores", clip.unavailable is None,
                        f"{clip.spec}: {clip.weights}" if clip.unavailable is None else clip.unavailable,
                        required=False))
    checks.append(Check("local weights", True, _weights_inventory(), required=False))
    return checks


def _weights_inventory() -> str:
    """Which learned backends could run here without a download (informational)."""
    # rembg's folders: <home>/models/<name>/ (home: U2NET_HOME, else REMBG_HOME or ~/.rembg) and the flat legacy one.
    homes = {Path(os.environ.get("U2NET_HOME", "~/.u2net")).expanduser(),
             Path(os.environ.get("U2NET_HOME") or os.environ.get("REMBG_HOME", "~/.rembg")).expanduser()}
    rembg = sorted({p.stem for home in homes for pattern in ("*.onnx", "models/*/*.onnx") for p in home.glob(pattern)})
    parts = [f"rembg models in {', '.join(sorted(map(str, homes)))}: {', '.join(rembg) or 'none'}"]
    try:
        import ai_edge_litert  # noqa: F401  (only whether the runtime is installed)

        parts.append("tflite runtime: installed")
    except ImportError:
        parts.append("tflite runtime: not installed")
    return "; ".join(parts)


# Ray ----------------------------------------------------------------------------------------------------------

CONNECT_TIMEOUT_S = 5.0


def _unreachable(address: str) -> str | None:
    """Why nothing listens at a `[ray://]host:port` address, or None. A TCP probe first, because Ray itself keeps
    retrying an address where nothing listens for many minutes."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return None  # "auto" and other forms: let Ray resolve them
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"nothing answers on {host}:{port} ({exc.strerror or exc})"


def ray_checks(request: Request) -> list[Check]:
    """Ray's CPUs and GPUs against the build's stage plan (`datagen.scheduling`)."""
    if request.no_ray:
        return [Check("ray", True, "--no-ray: the stages run in this process", required=False)]
    address = request.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        unreachable = _unreachable(address)
        if unreachable:
            return [Check("ray cluster", False, f"cannot reach {address}: {unreachable}",
                          "start the cluster (`ray start --head`) or fix --ray-address / RAY_ADDRESS")]
        try:
            from datagen.ray_runner import cluster_resources

            resources = cluster_resources(address)
        except Exception as exc:  # an unreachable cluster is the finding
            return [Check("ray cluster", False, f"cannot join {address}: {one_line(exc)}",
                          "start the cluster (`ray start --head`) or fix --ray-address / RAY_ADDRESS")]
        where = f"cluster at {address}"
        more_gpus = "add GPU nodes to the cluster"
    else:
        import torch

        cpus = request.num_cpus or os.cpu_count() or 1
        resources = {"CPU": float(cpus), "GPU": float(torch.cuda.device_count())}
        where = "local Ray (started by the build)"
        more_gpus = "run on a machine with a GPU"
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    checks = [Check("ray cpus", cpus >= 1, f"{where}: {cpus:g} CPU(s); every CPU stage task asks for 1",
                    "give Ray at least one CPU (--num-cpus)")]
    from filters.clip import resolve_clip

    config = request.config
    learned = learned_stages(config, resolve_clip(config.clip))
    try:
        plans = plan_stages(config, request.resources, learned, gpus, cpus)
    except ConfigError as exc:
        checks.append(Check("ray scheduling", False, f"{where}, {gpus:g} GPU(s): {exc}",
                            f"{more_gpus}, or change --gpus / --device"))
        return checks
    planned = "; ".join(f"{stage.value}: {plans[stage].describe()}" for stage in sorted(learned)) or "none"
    checks.append(Check("ray scheduling", True, f"{where}, {gpus:g} GPU(s); learned stages: {planned}"))
    return checks
