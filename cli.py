"""The `layerflow-data` command: thin typer commands, each one library call between parsing and printing.

Options that several commands share are declared once below (`Annotated` aliases); defaults come from the config
dataclasses (`BuildConfig`, `TrainConfig`, `SampleSettings`, `ReproduceConfig`), never restated here. Importing
this module loads no torch, Ray or open_clip: each command imports what it needs.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from datagen.config import DEMO_SOURCE, BuildConfig, FrameFolders
from layerflow_model.config import (
    DEFAULT_PRESET,
    DEFAULT_TASK_WEIGHTS,
    EVAL_CFG,
    Precision,
    Preset,
    Sampler,
    SampleSettings,
    Stage,
    TrainConfig,
)
from layerflow_model.layout import Task
from manifests.device import Device
from manifests.layers import SampleKind
from manifests.schema import RULE_COLUMNS
from recipes.config import ReproduceConfig

app = typer.Typer(
    name="layerflow-data",
    help="Build layered-video training data (foreground RGBA, background, blended) and train a LayerFlow model on it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
console = Console(stderr=True)
DEBUG_ENV = "LAYERFLOW_DEBUG"
SCHEDULING = "Scheduling (Ray)"
MEGA = 1_000_000
# Defaults that need converting to an option's type (the rest are the config fields themselves).
BUILD_SIZE = "x".join(map(str, BuildConfig.size))
BUILD_DEVICE = Device(BuildConfig.device)
TRAIN_DEVICE = Device(TrainConfig.device)
PRESET = Preset(DEFAULT_PRESET)

# Options that several commands share.
DatasetArg = Annotated[str, typer.Argument(help="Dataset folder written by `build`, or a URI (s3://..., gs://...).")]
DeviceOption = Annotated[Device, typer.Option(
    help="Where learned models run: auto (a GPU if visible), cpu, or cuda (a GPU or a one-line error; "
         "CUDA_VISIBLE_DEVICES picks which).")]
MattingOption = Annotated[str, typer.Option(
    help="auto (the registry's default for the device, fetched on first use; the built-in demo and an offline "
         "build without it: given, else bgsub) | given | bgsub | chroma[:green|:blue] | rembg:MODEL_OR_ONNX | "
         "tflite:PATH | sam2:CONFIG[:CKPT] | rembg:MODEL+sam2:CONFIG. See `layerflow-data models list`.")]
CaptionerOption = Annotated[str, typer.Option(
    help="auto (the registry's default captioner for the device, fetched on first use; the built-in demo and an "
         "offline build without it: sidecar) | sidecar | none | hf:MODEL_ID_OR_FOLDER (a transformers "
         "image-to-text model or chat VLM; captions cached under $LAYERFLOW_CACHE_DIR or ~/.cache/layerflow-data)")]
ClipOption = Annotated[str, typer.Option(
    help="CLIP scores: `auto` (the registry's default, fetched on first use; the built-in demo: only if cached, "
         "else null scores), `none`, or `openclip:ARCH:TAG_OR_FILE`.")]
OfflineOption = Annotated[bool, typer.Option(
    help="Never use the network for weights (as HF_HUB_OFFLINE=1): `auto` falls back to what is cached, then to "
         "the weight-free path; a named model must be cached.")]
CleanPlateOption = Annotated[str, typer.Option(
    help="How video_decomposed samples get the background behind the foreground: temporal (each covered pixel from "
         "the frames of the whole clip that show it, aligned by the camera's motion, median; the rest inpainted).")]
FramesOption = Annotated[int, typer.Option(help="Frames per layer clip.")]
FpsOption = Annotated[float, typer.Option(help="Frame rate the frames are sampled at.")]
SizeOption = Annotated[str, typer.Option(help="HEIGHTxWIDTH (or one number): resize, then centre-crop.")]
FrameFolderFpsOption = Annotated[float, typer.Option(help="Frame rate assumed for frame folders.")]
RayAddressOption = Annotated[str | None, typer.Option(help="Join this Ray cluster (default: RAY_ADDRESS, else a local "
                                                           "Ray).")]
NumCpusOption = Annotated[int | None, typer.Option(help="CPUs of the local Ray (default: all).")]
NoRayOption = Annotated[bool, typer.Option("--no-ray", help="Run the stages in this process, without Ray.")]
GpusOption = Annotated[float | None, typer.Option(
    help="GPUs for the learned stages (matte, caption, clip), each a pool of GPU actors; default: all the Ray "
         "cluster has (none with --device cpu).", rich_help_panel=SCHEDULING)]
ConcurrencyOption = Annotated[list[str] | None, typer.Option(
    help="Copies of a stage that run at once: N for every CPU stage (default 2), STAGE=N for one (decode, matte, "
         "compose, caption, score, clip), e.g. `--concurrency 4 --concurrency matte=2,clip=1`.",
    rich_help_panel=SCHEDULING)]
GpusPerActorOption = Annotated[list[str] | None, typer.Option(
    help="STAGE=F: each actor of a learned stage holds F of a GPU (a fraction shares one: 0.25 puts four on a "
         "GPU), e.g. `--gpus-per-actor matte=0.5,clip=0.25`.", rich_help_panel=SCHEDULING)]
CheckpointOption = Annotated[Path, typer.Option(help="Checkpoint folder, or a run folder (its last checkpoint).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
) -> None:
    if debug:
        os.environ[DEBUG_ENV] = "1"


@app.command("demo-source")
def demo_source(
    out: Annotated[Path, typer.Argument(help="Folder to create (must not exist or be empty).")],
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same files.")] = 0,
    profile: Annotated[str, typer.Option(
        help="default: 6 foreground videos, 4 background videos, 6 layered images; heldout: 32 objects in families "
             "(pictures and procedural shapes) over photo and texture backdrops, each with its identity in the "
             "sidecars (`group`, `background_group`), for a held-out evaluation.")] = "default",
) -> None:
    """Write an offline demo source built from pictures scikit-image ships (and, `--profile heldout`, procedural
    objects and textures).

    Foreground videos with ground-truth alpha (DAVIS layout), background videos and layered images.

    Example: `layerflow-data demo-source ./demo_src`, `layerflow-data demo-source ./heldout_src --profile heldout`
    """
    from datagen.demo import make_demo_source

    made = make_demo_source(out, seed=seed, profile=profile)
    console.print(f"demo source written to {out}: {_joined({k.replace('_', ' '): v for k, v in made.counts.items()})}")


@app.command()
def build(
    out: Annotated[str, typer.Option(
        help="Dataset folder to write, or a pyarrow filesystem URI (s3://bucket/ds, gs://...) to publish to.")],
    source: Annotated[str, typer.Option(
        help="A folder (recursive), a glob, or a list file (.txt/.csv/.parquet with a `uri` column), local or on "
             "object storage (s3://bucket/prefix, gs://...); `demo`: the built-in demo source, written to "
             "OUT/_demo_source.")] = DEMO_SOURCE,
    backgrounds: Annotated[str | None, typer.Option(help="A separate pool of background videos/images.")] = None,
    frames: FramesOption = BuildConfig.frames,
    fps: FpsOption = BuildConfig.fps,
    size: SizeOption = BUILD_SIZE,
    matting: MattingOption = BuildConfig.matting,
    captioner: CaptionerOption = BuildConfig.captioner,
    clip: ClipOption = BuildConfig.clip,
    kinds: Annotated[str, typer.Option(
        help="Sample kinds to make, comma-separated (each where the inputs allow it): video_copy_paste, image_frozen, "
             "video_decomposed, or all.")] = ",".join(kind.value for kind in BuildConfig.kinds),
    clean_plate: CleanPlateOption = BuildConfig.clean_plate,
    policy: Annotated[str | None, typer.Option(
        help="Policy TOML deciding `keep` (default: the shipped one; change it later with `filter`).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for frame spans, pairings and placements.")] = BuildConfig.seed,
    backgrounds_per_foreground: Annotated[int, typer.Option(
        help="Samples made from each foreground.")] = BuildConfig.backgrounds_per_foreground,
    val_fraction: Annotated[float, typer.Option(
        help="Share of identities held out as `val`: objects (sidecar `group`, else the content) and backgrounds "
             "(`background_group`, else the background input's own). A sample is `val` when its object and its "
             "background both are; one that would straddle the line is not made.")] = BuildConfig.val_fraction,
    crf: Annotated[int, typer.Option(help="H.264 quality of the RGB layers (lower is better).")] = BuildConfig.crf,
    x264_preset: Annotated[str, typer.Option(
        help="x264 speed preset of the RGB layers (ultrafast ... veryslow): slower presets make slightly better or "
             "smaller files at the same --crf.")] = BuildConfig.x264_preset,
    frame_folder_fps: FrameFolderFpsOption = BuildConfig.frame_folder_fps,
    frame_folders: Annotated[FrameFolders, typer.Option(
        help="What a folder of numbered images is: auto (a clip if they share one size and look like consecutive "
             "frames, or a sidecar says \"frame_folder\": true), clips, or images.")] = BuildConfig.frame_folders,
    max_megapixels: Annotated[float, typer.Option(
        help="Refuse images larger than this.")] = BuildConfig.max_pixels / MEGA,
    device: DeviceOption = BUILD_DEVICE,
    ray_address: RayAddressOption = None,
    num_cpus: NumCpusOption = None,
    no_ray: NoRayOption = False,
    gpus: GpusOption = None,
    concurrency: ConcurrencyOption = None,
    gpus_per_actor: GpusPerActorOption = None,
    overwrite: Annotated[bool, typer.Option(
        help="Delete what is at --out and build from scratch (needed when the settings or the source changed).")
    ] = False,
    keep_work: Annotated[bool, typer.Option(help="Keep the decoded clips in OUT/_work.")] = False,
    offline: OfflineOption = BuildConfig.offline,
) -> None:
    """Turn a source folder into a layered-video dataset (Parquet manifest + media).

    Rerunning the same command resumes an interrupted build: every input and sample already committed is skipped,
    and no sample is ever written twice. Exits 1 (saying why) when no sample could be made.

    Example: `layerflow-data build --out ./ds` (the built-in demo source)

    Example: `layerflow-data build --source ./demo_src --out ./ds`

    Example: `layerflow-data build --source clips.csv --backgrounds ./plates --out ./ds --size 320x512`

    Example: `layerflow-data build --source ./clips --out ./ds --kinds video_decomposed` (only the real clips,
    decomposed over their temporal clean plate)

    Example: `layerflow-data build --source ./clips --out ./ds --clip openclip:ViT-B-32:laion2b_s34b_b79k`

    Example: `layerflow-data build --source ./clips --out ./ds --matting rembg:isnet-general-use+sam2 --gpus 2
    --gpus-per-actor matte=0.5,clip=0.25` (four matting actors and eight CLIP actors on two GPUs)
    """
    from datagen.build import BuildJob, build_dataset
    from datagen.config import parse_size
    from datagen.scheduling import Resources

    config = BuildConfig(frames=frames, fps=fps, size=parse_size(size), matting=matting, captioner=captioner,
                         seed=seed, backgrounds_per_foreground=backgrounds_per_foreground, val_fraction=val_fraction,
                         crf=crf, x264_preset=x264_preset, frame_folder_fps=frame_folder_fps,
                         max_pixels=int(max_megapixels * MEGA), clip=clip, device=device.value, offline=offline,
                         kinds=kinds, clean_plate=clean_plate, frame_folders=frame_folders)
    resources = Resources.from_options(gpus, concurrency or [], gpus_per_actor or [])
    summary = build_dataset(BuildJob(out, source, config, backgrounds, policy, overwrite, keep_work, resources, no_ray,
                                     ray_address, num_cpus), log=_say)
    _print_summary(summary)
    if not summary["samples"]["total"]:  # every input is accounted for in the dataset: say why, and fail
        _fail(summary["samples"]["none_because"])


@app.command()
def inspect(
    dataset: DatasetArg,
    as_json: JsonOption = False,
    examples: Annotated[int, typer.Option(help="Sample rows to show.")] = 3,
) -> None:
    """What was built, what was rejected, what failed.

    Example: `layerflow-data inspect ./ds`
    """
    from manifests.inspect import inspect_dataset

    info = inspect_dataset(dataset, examples=examples)
    if as_json:
        print(json.dumps(info, indent=2, default=str))
    else:
        _print_inspect(dataset, info)


@app.command()
def validate(
    dataset: DatasetArg,
    allow_empty: Annotated[bool, typer.Option(help="Accept a dataset with no samples (otherwise a problem).")] = False,
    min_samples: Annotated[list[str] | None, typer.Option(
        help="KIND=N: at least N samples of that kind, e.g. `video_copy_paste=12` (repeatable).")] = None,
) -> None:
    """Check the schema, that every referenced file exists and decodes, frame counts, recomposition, that kept
    samples agree with the dataset's policy, and that the input states add up.

    Exits 1 on any problem, an empty dataset included (unless --allow-empty).

    Example: `layerflow-data validate ./ds`

    Example: `layerflow-data validate ./ds --min-samples video_copy_paste=12 --min-samples image_frozen=6`
    """
    from filters.audit import validate_dataset

    report = validate_dataset(dataset, progress=True, allow_empty=allow_empty,
                              min_samples=_counts_by_kind(min_samples or []))
    for problem in report.problems:
        console.print(f"[red]problem[/red] {problem}", highlight=False)
    status = "OK" if report.ok else f"{len(report.problems)} problem(s)"
    console.print(f"validate {dataset}: {report.samples} samples, {report.files} files decoded: {status}")
    if not report.ok:
        raise typer.Exit(1)


FILTER_HELP = """Re-apply a policy to stored scores: rewrites `keep`, `reject_reasons`, `flags` and `duplicate_of`.

Loads no model, so it takes seconds; prints the funnel: what each rule drops alone, how many are
left after it and every rule above it, how many it only flags, and how many had no score (and why).
Start your own policy from `DS/policy.toml`: the policy last applied (the shipped default after `build`).

Score columns a rule can name: {scores}.

Example: `layerflow-data filter ./ds --policy strict.toml`
"""


@app.command("filter", help=FILTER_HELP.format(scores=", ".join(f"`{name}`" for name in RULE_COLUMNS)))
def filter_(
    dataset: DatasetArg,
    policy: Annotated[Path | None, typer.Option(help="Policy TOML (default: the shipped default policy).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the funnel as JSON.")] = False,
) -> None:
    from filters.apply import apply_policy
    from filters.policy import Policy

    result = apply_policy(dataset, Policy.load(policy))
    print(json.dumps(result.as_dict(), indent=2) if as_json else result.as_text())


@app.command()
def report(
    dataset: DatasetArg,
    out: Annotated[Path | None, typer.Option(
        help="HTML file to write (default: DS/report.html; ./report.html for a dataset on object storage).")] = None,
    gallery: Annotated[int, typer.Option(help="Kept and rejected samples shown (each).", min=0)] = 24,
) -> None:
    """One self-contained HTML file (opens offline): the funnel, a histogram per score with its thresholds,
    a gallery of kept and rejected samples (four layers, a frame strip, captions, scores) and the failures.

    Example: `layerflow-data report ./ds && xdg-open ./ds/report.html`
    """
    from filters.report import write_report

    path = write_report(dataset, out, gallery=gallery)
    console.print(f"report written to {path} ({path.stat().st_size / 1e6:.1f} MB)")


class AnimationFormat(str, Enum):
    GIF = "gif"
    WEBP = "webp"


@app.command()
def preview(
    dataset: DatasetArg,
    sample_id: Annotated[str, typer.Argument(help="A sample_id from the manifest (see `inspect`).")],
    out: Annotated[Path, typer.Option(help="Folder for SAMPLE_ID_sheet.png and the animation.")] = Path("."),
    frames: Annotated[int, typer.Option(help="Frames (columns) in the contact sheet.", min=1)] = 6,
    animation: Annotated[AnimationFormat, typer.Option("--format", help="Animation format.")] = AnimationFormat.GIF,
) -> None:
    """A contact-sheet PNG (the four layers x evenly spaced frames) and an animation of the layers side by side.

    Example: `layerflow-data preview ./ds 1ba1b0a8e1b46141 --out ./previews --format webp`
    """
    from manifests.preview import write_preview

    sheet, moving = write_preview(dataset, sample_id, out, frames=frames, animation_format=animation.value)
    console.print(f"wrote {sheet} and {moving}")


@app.command()
def doctor(
    matting: MattingOption = BuildConfig.matting,
    captioner: CaptionerOption = BuildConfig.captioner,
    clip: ClipOption = BuildConfig.clip,
    device: DeviceOption = BUILD_DEVICE,
    ray_address: RayAddressOption = None,
    num_cpus: NumCpusOption = None,
    no_ray: NoRayOption = False,
    gpus: GpusOption = None,
    concurrency: ConcurrencyOption = None,
    gpus_per_actor: GpusPerActorOption = None,
) -> None:
    """Preflight: codecs (H.264 both ways, VP9 with alpha), torch and onnxruntime devices, the requested backends and
    which learned backends have weights here, and Ray resources against what the stages request. One line per
    check; a failed one says what to do. Exits 1 if the requested build cannot run.

    Example: `layerflow-data doctor`

    Example: `layerflow-data doctor --matting rembg:u2net --device cuda --ray-address auto --gpus 4`
    """
    from datagen.doctor import Request, can_run, diagnose
    from datagen.scheduling import Resources

    config = BuildConfig(matting=matting, captioner=captioner, clip=clip, device=device.value)
    resources = Resources.from_options(gpus, concurrency or [], gpus_per_actor or [])
    checks = diagnose(Request(config, ray_address, num_cpus, no_ray, resources))
    for check in checks:
        console.print(check.line(), highlight=False, soft_wrap=True)
    if not can_run(checks):
        _fail("the requested build cannot run here (see the FAIL lines)")
    console.print("[green]the requested build can run here[/green]")


models_app = typer.Typer(help="The model registry: list, fetch and verify the weights the learned stages use.",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per model instead of tables.")] = False,
) -> None:
    """Every known model, grouped as matting, captioning and clip: spec, size, revision, licence, default, and
    whether and where it is cached. Reads the disk only (works offline).

    Example: `layerflow-data models list`
    """
    from manifests.models import listing

    rows = listing()
    if as_json:
        print("\n".join(json.dumps(row, sort_keys=True) for row in rows))
    else:
        _print_models(rows)


@models_app.command("fetch")
def models_fetch(
    specs: Annotated[list[str] | None, typer.Argument(help="Specs as the options take them (see `models list`).")]
    = None,
    defaults: Annotated[bool, typer.Option(help="Fetch the defaults `auto` picks on --for.")] = False,
    for_device: Annotated[Device, typer.Option("--for", help="The device whose defaults --defaults fetches.")]
    = Device.CPU,
) -> None:
    """Download weights into the cache (once, with a progress bar, to a temporary name then renamed), verify them
    and pin them in the lock file. Run it on a machine with network, then copy the caches (README "Models").

    Example: `layerflow-data models fetch --defaults`

    Example: `layerflow-data models fetch sam2:sam2.1_hiera_t rembg:isnet-general-use --for cuda`
    """
    from manifests.models import fetch_specs, wanted_specs

    for fetched in fetch_specs(wanted_specs(specs or [], defaults, for_device.value)):
        _say(f"{fetched.pin.spec}: {fetched.path} (revision {fetched.pin.revision or 'file'}, "
             f"sha256 {fetched.pin.sha256})")


@models_app.command("verify")
def models_verify() -> None:
    """Recompute the sha256 of every fetched model and compare it with the lock file; exits 1 on a mismatch.

    Example: `layerflow-data models verify`
    """
    from manifests.models import read_lock, verify

    problems = verify()
    for spec, problem in problems:
        _say(f"[red]{spec}[/red]: {problem}")
    if problems:
        _fail(f"{len(problems)} problem(s); delete the file(s) named and run `layerflow-data models fetch` again")
    _say(f"{len(read_lock())} model(s) verified")


EvalVideosOption = Annotated[str, typer.Option(help="Folder (or glob) of videos / frame folders.")]
EvalMasksOption = Annotated[Path, typer.Option(
    help="Ground truth: MASKS/NAME/FRAME.png, NAME the video's name (DAVIS layout; or MASKS/NAME/masks/ beside "
         "its frames/); the clean background, if any: MASKS/NAME/background/FRAME.png, or one background.png.")]


@app.command("eval-layers")
def eval_layers(
    videos: EvalVideosOption,
    masks: EvalMasksOption,
    matting: MattingOption = "bgsub",
    frames: FramesOption = BuildConfig.frames,
    fps: FpsOption = BuildConfig.fps,
    size: SizeOption = BUILD_SIZE,
    frame_folder_fps: FrameFolderFpsOption = BuildConfig.frame_folder_fps,
    clean_plate: Annotated[str | None, typer.Option(
        help="Score this clean-plate method's plate (as a build makes it for video_decomposed, from the whole clip; "
             "e.g. temporal) instead of the matting backend's own.")] = None,
) -> None:
    """Score a backend's layers against ground truth on the frames a build would use; prints one JSON line.

    Per video: alpha IoU and MAE, the camera motion the backend measured and, where the truth has the clean
    background, the clean plate's PSNR inside and outside the object (with --clean-plate, that method's plate and
    the share of the covered background it invented); means overall and per camera.

    Example: `layerflow-data eval-layers --videos demo_src/foreground --masks demo_src/ground_truth`

    Example: `layerflow-data eval-layers --videos demo_src/foreground --masks demo_src/ground_truth --clean-plate
    temporal`
    """
    from datagen.config import parse_size
    from datagen.eval_matting import evaluate_matting

    config = BuildConfig(frames=frames, fps=fps, size=parse_size(size), frame_folder_fps=frame_folder_fps)
    print(json.dumps(evaluate_matting(videos, str(masks), matting, config, clean_plate), sort_keys=True))


# The former name of `eval-layers`: the same command, options and JSON line.
app.command("eval-matting", help="The former name of `eval-layers`: the same options, the same JSON line.\n\n"
            "Example: `layerflow-data eval-matting --videos demo_src/foreground --masks demo_src/ground_truth`")(
    eval_layers)


@app.command()
def train(
    manifest: Annotated[str, typer.Option(help="Dataset root (local path, or s3://, gs://, ... via pyarrow).")],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints go to OUT/checkpoint-<step>/.")],
    stage: Annotated[Stage, typer.Option(help="Which stage (motion and content need --init).")] = TrainConfig.stage,
    preset: Annotated[Preset, typer.Option(help="Model preset of the base stage.")] = PRESET,
    init: Annotated[str | None, typer.Option(help="Checkpoint (or run folder) of the previous stage.")] = None,
    pretrained: Annotated[str | None, typer.Option(
        help="Local CogVideoX-2b diffusers folder (small and cogvideox-2b presets).")] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps of this stage.")] = TrainConfig.steps,
    batch_size: Annotated[int, typer.Option(
        help="Samples per step and worker (one kind per batch).")] = TrainConfig.batch_size,
    lr: Annotated[float, typer.Option(help="AdamW learning rate after warm-up.")] = TrainConfig.lr,
    warmup: Annotated[int, typer.Option(help="Linear warm-up steps.")] = TrainConfig.warmup,
    grad_clip: Annotated[float, typer.Option(help="Gradient norm clip (0: off).")] = TrainConfig.grad_clip,
    ema: Annotated[float | None, typer.Option(help="EMA decay of the trained weights, e.g. 0.999.")] = TrainConfig.ema,
    checkpoint_every: Annotated[int, typer.Option(
        help="Write a checkpoint every N steps (and at the end).")] = TrainConfig.checkpoint_every,
    tasks: Annotated[str, typer.Option(
        help="Task mix as task=weight pairs, e.g. `generate=1,decompose=2,fg2bg=1,bg2fg=1`.")
    ] = ",".join(f"{task}={weight:g}" for task, weight in DEFAULT_TASK_WEIGHTS.items()),
    mix: Annotated[str | None, typer.Option(
        help="Sample-kind mix as kind=weight pairs, e.g. `video_copy_paste=1,video_decomposed=1,image_frozen=1`; "
             "a stage skips the kinds it does not use (base: videos only). Default: by kept samples per kind.")
    ] = TrainConfig.mix,
    split: Annotated[str, typer.Option(help="Manifest split to train on.")] = TrainConfig.split,
    seed: Annotated[int, typer.Option(help="Seed of data order, noise and initialisation.")] = TrainConfig.seed,
    workers: Annotated[int, typer.Option(
        help="Data-parallel workers with Ray Train (1: this process).")] = TrainConfig.workers,
    ray_address: RayAddressOption = None,
    device: DeviceOption = TRAIN_DEVICE,
    precision: Annotated[Precision, typer.Option(help="auto: bf16 on a GPU.")] = TrainConfig.precision,
    gradient_checkpointing: Annotated[bool, typer.Option(
        help="Recompute activations (less memory).")] = TrainConfig.gradient_checkpointing,
    cache_dir: Annotated[str | None, typer.Option(
        help="Keep VAE posteriors and T5 embeddings here and reuse them (GPU presets).")] = None,
    precompute: Annotated[bool, typer.Option(
        "--precompute", help="First encode every crop and prompt the run can draw into --cache-dir, then train "
                             "without running the encoders.")] = TrainConfig.precompute,
    crop_stride: Annotated[int, typer.Option(
        help="Video crops start every N frames (fewer crops to precompute).")] = TrainConfig.crop_stride,
    grad_accum: Annotated[int, typer.Option(
        help="Micro-batches per step: the step's batch is batch-size x grad-accum.")] = TrainConfig.grad_accum,
    loader_workers: Annotated[int, typer.Option(
        help="DataLoader processes decoding the next steps' clips (0: this process).")] = TrainConfig.loader_workers,
    prefetch: Annotated[int, typer.Option(help="Steps each loader worker decodes ahead.")] = TrainConfig.prefetch,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in OUT from its last checkpoint.")] = False,
    allow_empty_captions: Annotated[bool, typer.Option(
        "--allow-empty-captions", help="Train even if no kept sample has a caption (all prompts empty).")
    ] = TrainConfig.allow_empty_captions,
) -> None:
    """Train one stage of the LayerFlow model on the `keep` rows of a manifest.

    Example: `layerflow-data train --manifest ./ds --out runs/base --steps 1000`

    Example: `layerflow-data train --manifest ./ds --out runs/motion --stage motion --init runs/base --steps 200`

    Example: `layerflow-data train --manifest ./ds --out runs/content --stage content --init runs/motion`

    Example: `layerflow-data train --manifest ./ds --out runs/base --resume` (continue after a crash)

    Example: `layerflow-data train --manifest ./ds --out runs/2b --preset cogvideox-2b --pretrained CogVideoX-2b
    --batch-size 1 --grad-accum 8 --cache-dir cache --precompute --crop-stride 16 --loader-workers 4`
    """
    from layerflow_model.config import parse_task_weights
    from layerflow_model.launch import train_stage

    config = TrainConfig(
        manifest=manifest, out=str(out), stage=stage, init=init, steps=steps, batch_size=batch_size, lr=lr,
        warmup=warmup, grad_clip=grad_clip, ema=ema, checkpoint_every=checkpoint_every, seed=seed,
        task_weights=parse_task_weights(tasks), mix=mix, split=split, workers=workers, device=device.value,
        precision=precision, gradient_checkpointing=gradient_checkpointing, pretrained=pretrained,
        cache_dir=cache_dir, allow_empty_captions=allow_empty_captions, crop_stride=crop_stride,
        grad_accum=grad_accum, loader_workers=loader_workers, prefetch=prefetch, precompute=precompute,
    )
    result = train_stage(config, preset.value, resume=resume, ray_address=ray_address)
    console.print(f"{config.stage.value}: {result.steps} steps in {result.seconds:.1f} s "
                  f"({result.samples_per_second:.1f} samples/s), last loss {result.last_loss:.4f}, "
                  f"{result.trained_parameters:,} trained parameters -> {result.checkpoint}", highlight=False)


@app.command()
def sample(
    checkpoint: CheckpointOption,
    task: Annotated[Task, typer.Option(help="What to make.")],
    out: Annotated[Path, typer.Option(help="Folder for the layers and the preview.")],
    prompts: Annotated[str, typer.Option(
        help="`foreground; background; blended` (decompose reads the first two).")] = "",
    input: Annotated[Path | None, typer.Option(
        "--input", help="decompose: the blended video; bg2fg: the background video; fg2bg: a video with alpha "
                        "(WebM VP9 / ProRes 4444) or a folder of RGBA PNGs.")] = None,
    steps: Annotated[int, typer.Option(help="Denoising steps.")] = SampleSettings.steps,
    cfg: Annotated[float, typer.Option(help="Classifier-free guidance scale (constant).")] = SampleSettings.cfg,
    sampler: Annotated[Sampler, typer.Option(help="ddim, or dpm (DPM-Solver++ 2M).")] = SampleSettings.sampler,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = SampleSettings.seed,
    fps: Annotated[float, typer.Option(help="Frame rate of the written videos (a build's).")] = BuildConfig.fps,
    device: DeviceOption = Device.AUTO,
) -> None:
    """Sample one task: RGBA foreground (PNG sequence, WebM VP9 and ProRes 4444 with alpha), background and blended
    mp4, preview.

    Example: `layerflow-data sample --checkpoint runs/content --task generate --out s/gen
    --prompts "a cat; a lawn; a cat on a lawn"`

    Example: `layerflow-data sample --checkpoint runs/content --task decompose --input clip.mp4 --out s/dec
    --prompts "a cat; a lawn"`

    Example: `layerflow-data sample --checkpoint runs/content --task fg2bg --input fg.webm --out s/bg
    --prompts "a cat; a beach; a cat on a beach"`
    """
    from layerflow_model.sample import sample_to_folder

    settings = SampleSettings(steps=steps, cfg=cfg, sampler=sampler, seed=seed)
    written = sample_to_folder(checkpoint, task, prompts, out, input, settings, device=device.value, fps=fps)
    console.print(f"{task.value}: wrote {_joined({k: Path(v).name for k, v in written.items()})} in {out}",
                  highlight=False)


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder, or a run folder (its last checkpoint).")],
    out: Annotated[Path, typer.Option(help="Folder for the diffusers/peft export.")],
    ema: Annotated[bool, typer.Option(help="Export the EMA weights where the checkpoint has them.")] = True,
) -> None:
    """Export a checkpoint for diffusers: the content adapter in peft naming (`load_lora_adapter`), the changed
    transformer weights, the layer and given-slot embeddings and a config (`LayerFlowPipeline.from_export`).

    Example: `layerflow-data export runs/content --out export/`
    """
    from layerflow_model.export import export_checkpoint

    written = export_checkpoint(checkpoint, out, use_ema=ema)
    console.print(f"wrote {_joined({k: Path(v).name for k, v in written.items()})} in {out}", highlight=False)


@app.command("eval")
def eval_(
    checkpoint: CheckpointOption,
    manifest: Annotated[str, typer.Option(help="Dataset root (local path, or s3://, gs://, ...).")],
    split: Annotated[str, typer.Option(help="Split to evaluate on.")] = "val",
    steps: Annotated[int, typer.Option(help="Denoising steps per sample.")] = SampleSettings.steps,
    cfg: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = EVAL_CFG,
    sampler: Annotated[Sampler, typer.Option(help="ddim, or dpm (DPM-Solver++ 2M).")] = SampleSettings.sampler,
    seed: Annotated[int, typer.Option(help="Base noise seed (hashed with each sample id).")] = SampleSettings.seed,
    seeds: Annotated[int | None, typer.Option(
        help="Sampling seeds per sample and task (default: `layerflow_model.evaluate.EVAL_SEEDS`).")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate on the first N samples only.")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write eval.json, per-sample results and the table.")] = None,
    device: DeviceOption = Device.AUTO,
) -> None:
    """All four tasks (generate, decompose, fg2bg, bg2fg) on a split, each given only what a user would give it,
    next to the untrained model and a trivial predictor, with 95 % bootstrap intervals over samples and seeds.
    Prints one JSON line (stdout) and a table (stderr).

    Example: `layerflow-data eval --checkpoint runs/content --manifest ./ds --steps 10 --seeds 3`
    """
    from layerflow_model.evaluate import EVAL_SEEDS, evaluate, write_eval

    result = evaluate(checkpoint, manifest, split, SampleSettings(steps=steps, cfg=cfg, sampler=sampler, seed=seed),
                      limit=limit, device=device.value, seeds=EVAL_SEEDS if seeds is None else seeds)
    if out:
        write_eval(result, out)
    console.print(result.table(), highlight=False)
    print(json.dumps(result.summary, sort_keys=True))


@app.command()
def reproduce(
    out: Annotated[Path, typer.Option(help="Empty folder for everything: source, dataset, runs, samples, eval.")],
    base_steps: Annotated[int, typer.Option(help="Steps of the base stage.")] = ReproduceConfig.base_steps,
    motion_steps: Annotated[int, typer.Option(help="Steps of the motion LoRA stage.")] = ReproduceConfig.motion_steps,
    content_steps: Annotated[int, typer.Option(
        help="Steps of the content LoRA stage.")] = ReproduceConfig.content_steps,
    seed: Annotated[int, typer.Option(help="Training and sampling seed.")] = ReproduceConfig.seed,
    eval_steps: Annotated[int, typer.Option(help="Sampler steps of each eval sample.")] = ReproduceConfig.eval_steps,
    eval_sampler: Annotated[Sampler, typer.Option(
        help="The sampler of the eval samples.")] = ReproduceConfig.eval_sampler,
    eval_seeds: Annotated[int, typer.Option(
        help="Sampling seeds per held-out sample (the intervals cover them).")] = ReproduceConfig.eval_seeds,
    no_ray: NoRayOption = ReproduceConfig.no_ray,
) -> None:
    """The whole system on its embedded defaults: held-out demo source -> build -> filter -> train base, motion,
    content -> sample all four tasks -> classical baseline -> eval on the held-out objects and backgrounds (all four
    tasks, intervals, per family) -> report. About 16 minutes on 2 CPU cores (measured), no network.

    Example: `layerflow-data reproduce --out ./repro`
    """
    from recipes.reproduce import reproduce as run

    config = ReproduceConfig(out=str(out), base_steps=base_steps, motion_steps=motion_steps,
                             content_steps=content_steps, seed=seed, eval_steps=eval_steps, eval_sampler=eval_sampler,
                             eval_seeds=eval_seeds, no_ray=no_ray)
    record = run(config, log=_say)
    console.print(f"done in {record['seconds']['total']:.0f} s ({record['dataset']['heldout']} held-out samples, "
                  f"heldout_overlap {record['heldout_overlap']}): {out}/reproduce.json, {out}/eval/table.txt, "
                  f"{out}/samples/, {record['report']}", highlight=False)


# Parsing and printing helpers -------------------------------------------------------------------------------------


def _say(line: str) -> None:
    console.print(line, highlight=False, soft_wrap=True)


def _fail(line: str) -> None:
    """A command that ran but did not get what it was asked for: one red line, exit 1."""
    console.print(f"[red]{line}[/red]", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _joined(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def _counts_by_kind(pairs: list[str]) -> dict[str, int]:
    """`video_copy_paste=12` pairs -> {kind: count}; an unknown kind or a bad count is a one-line error."""
    from manifests.errors import ConfigError

    counts = {}
    for pair in pairs:
        kind, _, count = pair.partition("=")
        if kind not in {k.value for k in SampleKind} or not count.isdigit():
            raise ConfigError(f"--min-samples {pair!r}: expected KIND=N with KIND one of "
                              f"{', '.join(k.value for k in SampleKind)}")
        counts[kind] = int(count)
    return counts


def _print_summary(summary: dict) -> None:
    inputs, samples, seconds = summary["inputs"], summary["samples"], summary["seconds"]
    table = Table(title=f"layerflow-data build -> {summary['out']}", show_header=False)
    table.add_row("inputs", _joined(inputs))
    table.add_row("samples", f"{samples['total']} ({samples['kept']} kept, {samples['rejected']} rejected)")
    table.add_row("by kind", _joined(samples["by_kind"]))
    table.add_row("by split", _joined(samples["by_split"]))
    table.add_row("reject reasons", _joined(summary["reject_reasons"]))
    table.add_row("flags", _joined(summary["flags"]))
    table.add_row("unscored", _joined({column: entry["samples"] for column, entry in summary["unscored"].items()}))
    table.add_row("failures", _joined(summary["failures"]["by_stage"]))
    matting = summary["backends"]["matting"]
    table.add_row("matting", f"requested {matting['requested']}; used {_joined(matting['used'])}")
    for option, stage in summary["backends"].get("models", {}).items():
        table.add_row(f"{option} model", f"{stage['runs'] or 'none'} ({stage['why']})")
    stages = {k: f"{v:.1f} s" for k, v in seconds.items() if k != "wall"}
    table.add_row("time", f"{seconds['wall']:.1f} s wall; {_joined(stages)}")
    resumed = summary.get("resumed", {})
    if summary.get("already_complete"):
        table.add_row("resume", "nothing to do: this build was already complete")
    elif resumed.get("inputs_committed_before") or resumed.get("samples_committed_before"):
        table.add_row("resume", f"{resumed['inputs_committed_before']} inputs and "
                                f"{resumed['samples_committed_before']} samples were committed by an earlier run")
    Console().print(table)


def _print_models(rows: list[dict]) -> None:
    out = Console()
    for group in ("matting", "captioning", "clip"):
        table = Table(title=group, caption="size ?: unknown until fetched")
        table.add_column("spec", no_wrap=True)
        for name in ("size", "revision", "licence", "default"):
            table.add_column(name)
        table.add_column("cached at", overflow="fold")
        for row in (row for row in rows if row["group"] == group):
            size = f"{row['size_bytes'] / MEGA:.0f} MB" if row["size_bytes"] else "?"
            table.add_row(row["spec"], size, row["revision"] or "unpinned", row["licence"],
                          ", ".join(row["default_for"]) or "-", row["cached"] or "not cached")
        out.print(table)


def _print_inspect(dataset: str, info: dict) -> None:
    out = Console()
    counts = Table(title=f"{dataset}: {info['samples']} samples", show_header=False)
    for key in ("by_kind", "by_adapter", "by_split", "by_keep", "reject_reasons", "inputs", "inputs_by_kind"):
        counts.add_row(key.replace("_", " "), _joined(info[key]))
    out.print(counts)
    if info["failures"]:
        failures = Table("stage", "input", "error", title=f"{len(info['failures'])} failures")
        for failure in info["failures"]:
            failures.add_row(failure["stage"], failure["uri"], failure["error"])
        out.print(failures)
    for example in info["examples"]:
        rows = Table(show_header=False, title=f"sample {example['sample_id']}")
        for key, value in example.items():
            rows.add_row(key, str(value))
        out.print(rows)


def main() -> None:
    """Entry point: known errors become one clear line (exit 2); `--debug` shows the traceback."""
    from manifests.errors import LayerflowError

    try:
        app()
    except LayerflowError as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True, markup=True, highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
