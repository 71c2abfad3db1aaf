"""The `layerflow-data` command: thin typer commands, each calling one library function."""

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

from manifests.schema import SCORES
from recipes.config import ReproduceConfig

app = typer.Typer(
    name="layerflow-data",
    help="Build layered-video training data (foreground RGBA, background, blended) and inspect it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
console = Console(stderr=True)
DEBUG_ENV = "LAYERFLOW_DEBUG"
DEMO_SOURCE = "demo"
SCHEDULING = "Scheduling (Ray)"


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
) -> None:
    """Write an offline demo source built from pictures scikit-image ships.

    Foreground videos with ground-truth alpha (DAVIS layout), background videos and layered images.

    Example: `layerflow-data demo-source ./demo_src`
    """
    from datagen.demo import make_demo_source

    made = make_demo_source(out, seed=seed)
    counts = {k.replace("_", " "): v for k, v in made.counts.items()}
    console.print(f"demo source written to {out}: {_joined(counts)}")


@app.command()
def build(
    out: Annotated[str, typer.Option(
        help="Dataset folder to write, or a pyarrow filesystem URI (s3://bucket/ds, gs://...) to publish to.")],
    source: Annotated[str, typer.Option(
        help="A folder (recursive), a glob, or a list file (.txt/.csv/.parquet with a `uri` column); "
             "`demo`: the built-in demo source, written to OUT/_demo_source.")] = DEMO_SOURCE,
    backgrounds: Annotated[str | None, typer.Option(help="A separate pool of background videos/images.")] = None,
    frames: Annotated[int, typer.Option(help="Frames per layer clip.")] = 16,
    fps: Annotated[float, typer.Option(help="Frame rate the frames are sampled at.")] = 8.0,
    size: Annotated[str, typer.Option(help="HEIGHTxWIDTH (or one number), resize + centre-crop.")] = "256x256",
    matting: Annotated[str, typer.Option(
        help="auto | given | bgsub | chroma[:green|:blue] | rembg:MODEL_OR_ONNX | tflite:PATH | "
             "sam2:CONFIG[:CKPT] | rembg:MODEL+sam2:CONFIG")] = "auto",
    captioner: Annotated[str, typer.Option(
        help="sidecar | none | hf:MODEL_ID_OR_FOLDER (a transformers image-to-text model or chat VLM, on --device; "
             "captions cached under $LAYERFLOW_CACHE_DIR or ~/.cache/layerflow-data)")] = "sidecar",
    clip: Annotated[str, typer.Option(
        help="CLIP scores: `auto` (the default model if its weights are on this machine, else null scores), "
             "`none`, or `openclip:ARCH:TAG_OR_FILE` (downloaded if needed).")] = "auto",
    policy: Annotated[Path | None, typer.Option(
        help="Policy TOML deciding `keep` (default: the shipped one; change it later with `filter`).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for frame spans, pairings and placements.")] = 0,
    backgrounds_per_foreground: Annotated[int, typer.Option(help="Samples made from each foreground.")] = 2,
    val_fraction: Annotated[float, typer.Option(help="Share of foregrounds whose samples go to `val`.")] = 0.1,
    crf: Annotated[int, typer.Option(help="H.264 quality of the RGB layers (lower is better).")] = 18,
    frame_folder_fps: Annotated[float, typer.Option(help="Frame rate assumed for frame folders.")] = 24.0,
    max_megapixels: Annotated[float, typer.Option(help="Refuse images larger than this.")] = 50.0,
    ray_address: Annotated[str | None, typer.Option(help="Join this Ray cluster (default: a local Ray).")] = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs for the local Ray (default: all).")] = None,
    device: Annotated[str, typer.Option(
        help="Device of the learned backends: auto (a GPU if visible), cpu, or cuda (a GPU or an error).")] = "auto",
    gpus: Annotated[float | None, typer.Option(
        help="GPUs for the learned stages (matte, caption, clip), each a pool of GPU actors; "
             "default: all the Ray cluster has (none with --device cpu).", rich_help_panel=SCHEDULING)] = None,
    concurrency: Annotated[int, typer.Option(help="Copies of each CPU stage that run at once.",
                                             rich_help_panel=SCHEDULING)] = 2,
    decode_concurrency: Annotated[int | None, typer.Option(help="Decode tasks at once.",
                                                           rich_help_panel=SCHEDULING)] = None,
    matte_concurrency: Annotated[int | None, typer.Option(
        help="Matting copies (GPU actors with GPUs; default: as many as fit).", rich_help_panel=SCHEDULING)] = None,
    compose_concurrency: Annotated[int | None, typer.Option(help="Compose tasks at once.",
                                                            rich_help_panel=SCHEDULING)] = None,
    caption_concurrency: Annotated[int | None, typer.Option(help="Captioner copies.",
                                                            rich_help_panel=SCHEDULING)] = None,
    score_concurrency: Annotated[int | None, typer.Option(help="Pixel-score tasks at once.",
                                                          rich_help_panel=SCHEDULING)] = None,
    clip_concurrency: Annotated[int | None, typer.Option(help="CLIP scorer copies.",
                                                         rich_help_panel=SCHEDULING)] = None,
    matte_gpus: Annotated[float | None, typer.Option(
        help="GPUs per matting actor; a fraction shares a GPU (0.25: four per GPU).", rich_help_panel=SCHEDULING)
    ] = None,
    caption_gpus: Annotated[float | None, typer.Option(help="GPUs per captioner actor.",
                                                       rich_help_panel=SCHEDULING)] = None,
    clip_gpus: Annotated[float | None, typer.Option(help="GPUs per CLIP actor.", rich_help_panel=SCHEDULING)] = None,
    no_ray: Annotated[bool, typer.Option("--no-ray", help="Run the stages in this process, without Ray.")] = False,
    overwrite: Annotated[bool, typer.Option(
        help="Delete what is at --out and build from scratch (needed when the settings or the source changed).")
    ] = False,
    keep_work: Annotated[bool, typer.Option(help="Keep the decoded clips in OUT/_work.")] = False,
) -> None:
    """Turn a source folder into a layered-video dataset (Parquet manifest + media).

    Rerunning the same command resumes an interrupted build: every input and sample already committed is skipped,
    and no sample is ever written twice.

    Example: `layerflow-data build --out ./ds` (the built-in demo source)

    Example: `layerflow-data build --source ./demo_src --out ./ds`

    Example: `layerflow-data build --source clips.csv --backgrounds ./plates --out ./ds --size 320x512`

    Example: `layerflow-data build --source ./clips --out ./ds --clip openclip:ViT-B-32:laion2b_s34b_b79k`

    Example: `layerflow-data build --source ./clips --out ./ds --matting rembg:isnet-general-use+sam2 --gpus 2
    --matte-gpus 0.5 --clip-gpus 0.25` (four matting actors and eight CLIP actors on two GPUs)
    """
    from datagen.build import build as run_build
    from datagen.build import resolve_clip
    from datagen.config import BuildConfig, parse_size
    from datagen.doctor import preflight
    from datagen.runner import make_runner
    from datagen.scheduling import Resources, StageName
    from filters.policy import Policy

    config = BuildConfig(
        frames=frames, fps=fps, size=parse_size(size), matting=matting, captioner=captioner, seed=seed,
        backgrounds_per_foreground=backgrounds_per_foreground, val_fraction=val_fraction, crf=crf,
        frame_folder_fps=frame_folder_fps, max_pixels=int(max_megapixels * 1e6), clip=clip, device=device,
    )
    per_stage = {StageName.DECODE: decode_concurrency, StageName.MATTE: matte_concurrency,
                 StageName.COMPOSE: compose_concurrency, StageName.CAPTION: caption_concurrency,
                 StageName.SCORE: score_concurrency, StageName.CLIP: clip_concurrency}
    shares = {StageName.MATTE: matte_gpus, StageName.CAPTION: caption_gpus, StageName.CLIP: clip_gpus}
    resources = Resources(gpus=gpus, concurrency=concurrency,
                          stage_concurrency={k: v for k, v in per_stage.items() if v is not None},
                          gpus_per_actor={k: v for k, v in shares.items() if v is not None})
    preflight(config, on_cluster=bool(ray_address or os.environ.get("RAY_ADDRESS")))
    chosen_policy = Policy.load(policy)
    clip_choice = resolve_clip(config.clip)
    if clip_choice.unavailable:
        console.print(f"[yellow]no CLIP scores[/yellow]: {clip_choice.unavailable}", highlight=False)
    if source == DEMO_SOURCE:
        source = str(_demo_source(out))
    with make_runner(no_ray, ray_address, num_cpus) as runner:
        summary = run_build(source, out, config, runner, backgrounds=backgrounds, overwrite=overwrite,
                            keep_work=keep_work, resources=resources, policy=chosen_policy, clip=clip_choice)
    _print_summary(summary)
    if not summary["samples"]["total"]:  # every input is accounted for in the dataset; say why, and fail
        console.print(f"[red]{summary['samples']['none_because']}[/red]", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _demo_source(out: str) -> Path:
    """The built-in demo source, written once beside the dataset's own files (in the staging folder for a URI)."""
    from datagen.demo import make_demo_source
    from datagen.publish import staging_dir
    from manifests.storage import is_remote

    folder = (staging_dir(out) if is_remote(out) else Path(out)) / "_demo_source"
    if not folder.exists():
        console.print(f"writing the built-in demo source to {folder}")
        make_demo_source(folder)
    return folder


def _local(dataset: str) -> Path:
    """A dataset folder; one on object storage is mirrored into the local cache first (changed files only)."""
    from datagen.publish import local_copy
    from manifests.storage import is_remote

    if not is_remote(dataset):
        return Path(dataset)
    folder = local_copy(dataset)
    console.print(f"{dataset} mirrored to {folder}")
    return folder


def _joined(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def _print_summary(summary: dict) -> None:
    inputs, samples, seconds = summary["inputs"], summary["samples"], summary["seconds"]
    table = Table(title=f"layerflow-data build -> {summary['out']}", show_header=False)
    table.add_row("inputs", _joined(inputs))
    table.add_row("samples", f"{samples['total']} ({samples['kept']} kept, {samples['rejected']} rejected)")
    table.add_row("by kind", _joined(samples["by_kind"]))
    table.add_row("by split", _joined(samples["by_split"]))
    table.add_row("reject reasons", _joined(summary["reject_reasons"]))
    table.add_row("flags", _joined(summary["flags"]))
    unscored = {column: entry["samples"] for column, entry in summary["unscored"].items()}
    table.add_row("unscored", _joined(unscored))
    table.add_row("failures", _joined(summary["failures"]["by_stage"]))
    matting = summary["backends"]["matting"]
    table.add_row("matting", f"requested {matting['requested']}; used {_joined(matting['used'])}")
    table.add_row("captioner", summary["backends"]["captioner"])
    clip = summary["backends"]["clip"]
    table.add_row("clip", clip["spec"] if not clip["unavailable"] else f"none: {clip['unavailable']}")
    stages = {k: f"{v:.1f} s" for k, v in seconds.items() if k != "wall"}
    table.add_row("time", f"{seconds['wall']:.1f} s wall; {_joined(stages)}")
    resumed = summary.get("resumed", {})
    if summary.get("already_complete"):
        table.add_row("resume", "nothing to do: this build was already complete")
    elif resumed.get("inputs_committed_before") or resumed.get("samples_committed_before"):
        table.add_row("resume", f"{resumed['inputs_committed_before']} inputs and "
                                f"{resumed['samples_committed_before']} samples were committed by an earlier run")
    Console().print(table)


@app.command()
def inspect(
    dataset: Annotated[str, typer.Argument(help="Dataset folder written by `build` (or s3://..., gs://...).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    examples: Annotated[int, typer.Option(help="Sample rows to show.")] = 3,
) -> None:
    """What was built, what was rejected, what failed.

    Example: `layerflow-data inspect ./ds`
    """
    from manifests.inspect import inspect_dataset

    info = inspect_dataset(_local(dataset), examples=examples)
    if as_json:
        print(json.dumps(info, indent=2, default=str))
        return
    out = Console()
    counts = Table(title=f"{dataset}: {info['samples']} samples", show_header=False)
    for key in ("by_kind", "by_split", "by_keep", "reject_reasons", "inputs", "inputs_by_kind"):
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


@app.command()
def validate(
    dataset: Annotated[str, typer.Argument(help="Dataset folder written by `build` (or s3://..., gs://...).")],
    allow_empty: Annotated[bool, typer.Option(help="Accept a dataset with no samples (otherwise a problem).")] = False,
    min_samples: Annotated[list[str] | None, typer.Option(
        help="KIND=N: at least N samples of that kind, e.g. `video_copy_paste=12` (repeatable).")] = None,
) -> None:
    """Check the schema, that every referenced file exists and decodes, frame counts, recomposition, that kept
    samples agree with the dataset's policy, and that the input states add up.

    Exits non-zero on any problem, an empty dataset included (unless --allow-empty).

    Example: `layerflow-data validate ./ds`

    Example: `layerflow-data validate ./ds --min-samples video_copy_paste=12 --min-samples image_frozen=6`
    """
    from filters.audit import validate_dataset

    report = validate_dataset(_local(dataset), progress=True, allow_empty=allow_empty,
                              min_samples=_counts_by_kind(min_samples or []))
    for problem in report.problems:
        console.print(f"[red]problem[/red] {problem}")
    status = "OK" if report.ok else f"{len(report.problems)} problem(s)"
    console.print(f"validate {dataset}: {report.samples} samples, {report.files} files decoded: {status}")
    if not report.ok:
        raise typer.Exit(1)


def _counts_by_kind(pairs: list[str]) -> dict[str, int]:
    """`video_copy_paste=12` pairs -> {kind: count}; an unknown kind or a bad count is a one-line error."""
    from manifests.errors import ConfigError
    from manifests.layers import SampleKind

    counts = {}
    for pair in pairs:
        kind, _, count = pair.partition("=")
        if kind not in {k.value for k in SampleKind} or not count.isdigit():
            raise ConfigError(f"--min-samples {pair!r}: expected KIND=N with KIND one of "
                              f"{', '.join(k.value for k in SampleKind)}")
        counts[kind] = int(count)
    return counts


FILTER_HELP = """Re-apply a policy to stored scores: rewrites `keep`, `reject_reasons`, `flags` and `duplicate_of`.

Loads no model, so it takes seconds; prints the funnel: what each rule drops alone, how many are
left after it and every rule above it, how many it only flags, and how many had no score (and why).
Start your own policy from `DS/policy.toml`: the policy last applied (the shipped default after `build`).

Score columns a rule can name: {scores}.

Example: `layerflow-data filter ./ds --policy strict.toml`
"""


@app.command("filter", help=FILTER_HELP.format(scores=", ".join(f"`{name}`" for name in SCORES)))
def filter_(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder written by `build`.")],
    policy: Annotated[Path | None, typer.Option(help="Policy TOML (default: the shipped default policy).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the funnel as JSON.")] = False,
) -> None:
    from filters.apply import apply_policy
    from filters.policy import Policy

    result = apply_policy(dataset, Policy.load(policy))
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
        return
    print(result.as_text())


@app.command()
def report(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder written by `build`.")],
    out: Annotated[Path | None, typer.Option(help="HTML file to write (default: DS/report.html).")] = None,
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
    dataset: Annotated[Path, typer.Argument(help="Dataset folder written by `build`.")],
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
    matting: Annotated[str, typer.Option(help="The matting backend the build will use.")] = "auto",
    captioner: Annotated[str, typer.Option(
        help="The captioner the build will use: sidecar | none | hf:MODEL_ID_OR_FOLDER.")] = "sidecar",
    clip: Annotated[str, typer.Option(help="auto | none | openclip:ARCH:TAG_OR_FILE")] = "auto",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda, as for build.")] = "auto",
    ray_address: Annotated[str | None, typer.Option(help="Check this Ray cluster's resources.")] = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs the local Ray would get (default: all).")] = None,
    gpus: Annotated[float | None, typer.Option(help="--gpus of the build (default: all the cluster has).")] = None,
    no_ray: Annotated[bool, typer.Option("--no-ray", help="The build will run without Ray.")] = False,
) -> None:
    """Preflight: codecs (H.264 both ways, VP9 with alpha), torch and onnxruntime devices, the requested backends and
    which learned backends have weights here, and Ray resources against what the stages request. One line per
    check; a failed one says what to do. Exits 1 if the requested build cannot run.

    Example: `layerflow-data doctor`

    Example: `layerflow-data doctor --matting rembg:u2net --device cuda --ray-address auto --gpus 4`
    """
    from datagen.config import BuildConfig
    from datagen.doctor import Request, can_run, diagnose
    from datagen.scheduling import Resources

    config = BuildConfig(matting=matting, captioner=captioner, clip=clip, device=device)
    checks = diagnose(Request(config, ray_address, num_cpus, no_ray, Resources(gpus=gpus)))
    for check in checks:
        console.print(check.line(), highlight=False, soft_wrap=True)
    if not can_run(checks):
        console.print("[red]the requested build cannot run here[/red] (see the FAIL lines)")
        raise typer.Exit(1)
    console.print("[green]the requested build can run here[/green]")


@app.command("eval-matting")
def eval_matting(
    videos: Annotated[str, typer.Option(help="Folder (or glob) of videos / frame folders.")],
    masks: Annotated[Path, typer.Option(help="Ground truth: MASKS/<video name>/<frame>.png (DAVIS layout).")],
    matting: Annotated[str, typer.Option(
        help="Backend to score: bgsub | chroma | given | auto | rembg:MODEL_OR_ONNX | tflite:PATH | "
             "sam2:CONFIG[:CKPT] | rembg:MODEL+sam2:CONFIG")] = "bgsub",
    frames: Annotated[int, typer.Option(help="Frames per clip, as in `build`.")] = 16,
    fps: Annotated[float, typer.Option(help="Sampling rate, as in `build`.")] = 8.0,
    size: Annotated[str, typer.Option(help="HEIGHTxWIDTH, as in `build`.")] = "256x256",
    frame_folder_fps: Annotated[float, typer.Option(help="Frame rate assumed for frame folders.")] = 24.0,
) -> None:
    """Score a matting backend against ground-truth masks; prints one JSON line.

    Example: `layerflow-data eval-matting --videos demo_src/foreground --masks demo_src/ground_truth`
    """
    from datagen.config import BuildConfig, parse_size
    from datagen.eval_matting import evaluate_matting

    config = BuildConfig(frames=frames, fps=fps, size=parse_size(size), frame_folder_fps=frame_folder_fps)
    print(json.dumps(evaluate_matting(videos, str(masks), matting, config), sort_keys=True))


TASK_WEIGHTS_HELP = "Task mix as task=weight pairs, e.g. `generate=1,decompose=2,fg2bg=1,bg2fg=1`."


def _task_weights(text: str) -> dict[str, float]:
    from manifests.errors import ConfigError

    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--tasks: {part!r} is not task=weight ({TASK_WEIGHTS_HELP})") from None
    return weights


@app.command()
def train(
    manifest: Annotated[str, typer.Option(help="Dataset root (local path, or s3://, gs://, ... via pyarrow).")],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints go to OUT/checkpoint-<step>/.")],
    stage: Annotated[str, typer.Option(help="base | motion | content (motion and content need --init).")] = "base",
    preset: Annotated[str, typer.Option(help="Model preset for the base stage: toy | small | cogvideox-2b.")] = "toy",
    init: Annotated[str | None, typer.Option(help="Checkpoint (or run folder) of the previous stage.")] = None,
    pretrained: Annotated[str | None, typer.Option(
        help="Local CogVideoX-2b diffusers folder (small and cogvideox-2b presets).")] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps of this stage.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Samples per step and worker (one kind per batch).")] = 4,
    lr: Annotated[float, typer.Option(help="AdamW learning rate after warm-up.")] = 3e-4,
    warmup: Annotated[int, typer.Option(help="Linear warm-up steps.")] = 50,
    grad_clip: Annotated[float, typer.Option(help="Gradient norm clip (0: off).")] = 1.0,
    ema: Annotated[float | None, typer.Option(help="EMA decay of the trained weights, e.g. 0.999.")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Write a checkpoint every N steps (and at the end).")] = 500,
    tasks: Annotated[str, typer.Option(help=TASK_WEIGHTS_HELP)] = "generate=1,decompose=1,fg2bg=1,bg2fg=1",
    split: Annotated[str, typer.Option(help="Manifest split to train on.")] = "train",
    seed: Annotated[int, typer.Option(help="Seed of data order, noise and initialisation.")] = 0,
    workers: Annotated[int, typer.Option(help="Data-parallel workers with Ray Train (1: this process).")] = 1,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster for --workers > 1 (default: local).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 on GPU) | fp32 | bf16")] = "auto",
    gradient_checkpointing: Annotated[bool, typer.Option(help="Recompute activations (less memory).")] = False,
    cache_dir: Annotated[str | None, typer.Option(
        help="Keep VAE latents and T5 embeddings here and reuse them (GPU presets).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in OUT from its last checkpoint.")] = False,
) -> None:
    """Train one stage of the LayerFlow model on the `keep` rows of a manifest.

    Example: `layerflow-data train --manifest ./ds --out runs/base --steps 1000`

    Example: `layerflow-data train --manifest ./ds --out runs/motion --stage motion --init runs/base --steps 200`

    Example: `layerflow-data train --manifest ./ds --out runs/content --stage content --init runs/motion`

    Example: `layerflow-data train --manifest ./ds --out runs/base --resume` (continue after a crash)
    """
    from layerflow_model.config import TrainConfig
    from layerflow_model.config import preset as model_preset

    config = TrainConfig(
        manifest=manifest, out=str(out), stage=stage, init=init, steps=steps, batch_size=batch_size, lr=lr,
        warmup=warmup, grad_clip=grad_clip, ema=ema, checkpoint_every=checkpoint_every, seed=seed,
        task_weights=_task_weights(tasks), split=split, workers=workers, device=device, precision=precision,
        gradient_checkpointing=gradient_checkpointing, pretrained=pretrained, cache_dir=cache_dir,
    )
    model = model_preset(preset, pretrained=pretrained) if config.stage.value == "base" else None
    if workers > 1:
        from layerflow_model.ray_train import train_distributed

        result = train_distributed(config, model, resume=resume, ray_address=ray_address)
    else:
        from layerflow_model.train import train as run_train

        result = run_train(config, model, resume=resume)
    console.print(f"{config.stage.value}: {result.steps} steps in {result.seconds:.1f} s "
                  f"({result.samples_per_second:.1f} samples/s), last loss {result.last_loss:.4f}, "
                  f"{result.trained_parameters:,} trained parameters -> {result.checkpoint}", highlight=False)


@app.command()
def sample(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint folder, or a run folder (its last checkpoint).")],
    task: Annotated[str, typer.Option(help="What to make: generate | decompose | fg2bg | bg2fg.")],
    out: Annotated[Path, typer.Option(help="Folder for the layers and the preview.")],
    prompts: Annotated[str, typer.Option(
        help="`foreground; background; blended` (decompose reads the first two).")] = "",
    input: Annotated[Path | None, typer.Option(
        "--input", help="decompose: the blended video; bg2fg: the background video; fg2bg: a video with alpha "
                        "(WebM VP9 / ProRes 4444) or a folder of RGBA PNGs.")] = None,
    steps: Annotated[int, typer.Option(help="Denoising steps.")] = 25,
    cfg: Annotated[float, typer.Option(help="Classifier-free guidance scale (constant).")] = 5.0,
    sampler: Annotated[str, typer.Option(help="ddim | dpm (DPM-Solver++ 2M)")] = "ddim",
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
    fps: Annotated[float, typer.Option(help="Frame rate of the written videos.")] = 8.0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
) -> None:
    """Sample one task: RGBA foreground (PNG sequence + WebM with alpha), background and blended mp4, preview.

    Example: `layerflow-data sample --checkpoint runs/content --task generate --out s/gen
    --prompts "a cat; a lawn; a cat on a lawn"`

    Example: `layerflow-data sample --checkpoint runs/content --task decompose --input clip.mp4 --out s/dec
    --prompts "a cat; a lawn"`

    Example: `layerflow-data sample --checkpoint runs/content --task fg2bg --input fg.webm --out s/bg
    --prompts "a cat; a beach; a cat on a beach"`
    """
    from layerflow_model.sample import SampleSettings, sample_to_folder

    settings = SampleSettings(steps=steps, cfg=cfg, sampler=sampler, seed=seed)
    written = sample_to_folder(checkpoint, task, prompts, out, input, settings, device=device, fps=fps)
    console.print(f"{task}: wrote {_joined({k: Path(v).name for k, v in written.items()})} in {out}",
                  highlight=False)


@app.command("eval")
def eval_(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint folder, or a run folder (its last checkpoint).")],
    manifest: Annotated[str, typer.Option(help="Dataset root.")],
    split: Annotated[str, typer.Option(help="Split to evaluate on.")] = "val",
    steps: Annotated[int, typer.Option(help="Denoising steps per sample.")] = 25,
    cfg: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 3.0,
    seed: Annotated[int, typer.Option(help="Noise seed (per sample: seed + index).")] = 0,
    limit: Annotated[int | None, typer.Option(help="Evaluate on the first N samples only.")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write eval.json, per-sample results and the table.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
) -> None:
    """Decomposition and generation metrics on a split, next to the untrained model and a trivial predictor
    (background = input blend, alpha = 0). Prints one JSON line (stdout) and a table (stderr).

    Example: `layerflow-data eval --checkpoint runs/content --manifest ./ds`
    """
    from layerflow_model.evaluate import evaluate, write_eval
    from layerflow_model.sample import SampleSettings

    result = evaluate(checkpoint, manifest, split, SampleSettings(steps=steps, cfg=cfg, seed=seed), limit=limit,
                      device=device)
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
    no_ray: Annotated[bool, typer.Option("--no-ray", help="Build without Ray.")] = ReproduceConfig.no_ray,
) -> None:
    """The whole system on its embedded defaults: demo source -> build -> filter -> train base, motion, content
    -> sample all four tasks -> eval -> report. About 17 minutes on 2 CPU cores (measured), no network.

    Example: `layerflow-data reproduce --out ./repro`
    """
    from recipes.reproduce import reproduce as run

    config = ReproduceConfig(out=str(out), base_steps=base_steps, motion_steps=motion_steps,
                             content_steps=content_steps, seed=seed, no_ray=no_ray)
    record = run(config, log=lambda line: console.print(line, highlight=False))
    console.print(f"done in {record['seconds']['total']:.0f} s: {out}/reproduce.json, {out}/eval/table.txt, "
                  f"{out}/samples/, {record['report']}", highlight=False)


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
