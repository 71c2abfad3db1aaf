"""`build`: sources -> decode -> matte -> plan -> compose -> caption -> score -> manifest, failures, inputs, summary.

The recipe is the two stage lists below (`input_stages`, `sample_stages`); a runner (`datagen.runner`) executes
them. Inputs commit one by one and samples a manifest part at a time (`datagen.resume`), so a rerun resumes; the
end states and the summary are accounted for in `datagen.accounting`, and the policy decides last
(`filters.apply.apply_policy`).
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datagen.accounting import (
    SUMMARY_COLUMNS,
    device_summary,
    failure_rows,
    input_states,
    make_summary,
    mark_copies,
    nothing_made,
    part_record,
    unscored_summary,
)
from datagen.cleanplate import load_clean_plate
from datagen.config import DEMO_SOURCE, BuildConfig
from datagen.demo import demo_source_for
from datagen.plan import plan_samples
from datagen.preflight import Models, choose_models, learned_stages, preflight
from datagen.publish import Mirror, staging_dir
from datagen.resume import BuildFolder, Committed, build_record
from datagen.rows import InputRow, SampleRow
from datagen.runner import Runner, StageSpec, make_runner
from datagen.scheduling import Resources, StageName, StagePlan, plan_stages, with_device
from datagen.sources import SourceItem, discover_source
from datagen.stages import CaptionStage, ClipStage, ComposeStage, DecodeStage, MatteStage, ScoreStage
from filters.apply import apply_policy
from filters.clip import ClipChoice
from filters.policy import Policy
from manifests import io, storage
from manifests.errors import ConfigError
from manifests.layers import Role, Stage
from manifests.schema import CAPTION_LAYERS, KIND


def _spec(name: StageName, cls: type, plans: dict[StageName, StagePlan], **kwargs: object) -> StageSpec:
    plan = plans[name]
    if "config" in kwargs:
        kwargs["config"] = with_device(kwargs["config"], plan)
    elif "device" in kwargs:
        kwargs["device"] = plan.device
    return StageSpec(name, cls, kwargs, plan.concurrency, num_cpus=plan.num_cpus, num_gpus=plan.num_gpus,
                     actor=plan.actor)


def input_stages(config: BuildConfig, work_dir: Path, plans: dict[StageName, StagePlan],
                 remote: str | None = None) -> list[StageSpec]:
    return [
        _spec(StageName.DECODE, DecodeStage, plans, config=config, work_dir=str(work_dir), remote=remote),
        _spec(StageName.MATTE, MatteStage, plans, config=config, work_dir=str(work_dir), remote=remote),
    ]


def sample_stages(config: BuildConfig, out: Path, plans: dict[StageName, StagePlan], clip: ClipChoice,
                  remote: str | None = None) -> list[StageSpec]:
    """`out`: the local folder the media are written to; `remote`: the store they are published to, if any."""
    return [
        _spec(StageName.COMPOSE, ComposeStage, plans, config=config, out_dir=str(out), remote=remote),
        _spec(StageName.CAPTION, CaptionStage, plans, config=config, out_dir=str(out), remote=remote),
        _spec(StageName.SCORE, ScoreStage, plans, config=config, out_dir=str(out), remote=remote),
        _spec(StageName.CLIP, ClipStage, plans, out_dir=str(out), clip_arch=clip.arch, clip_weights=clip.weights,
              clip_tag=clip.tag, unavailable=clip.unavailable, device=config.device, remote=remote),
    ]


@dataclass(frozen=True)
class BuildJob:
    """One `layerflow-data build`: what to build, where to write it, and what to run it on."""

    out: str  # a folder, or a pyarrow filesystem URI (s3://bucket/ds)
    source: str = DEMO_SOURCE  # a folder, a glob, a list file, or `demo` (the built-in demo source)
    config: BuildConfig = field(default_factory=BuildConfig)
    backgrounds: str | None = None  # a separate pool of backgrounds
    policy: str | None = None  # a policy TOML (None: the shipped default)
    overwrite: bool = False
    keep_work: bool = False
    resources: Resources = field(default_factory=Resources)
    no_ray: bool = False
    ray_address: str | None = None  # None: RAY_ADDRESS, else a local Ray
    num_cpus: int | None = None  # CPUs of the local Ray (None: all)


def build_dataset(job: BuildJob, log: Callable[[str], None] = print) -> dict:
    """`layerflow-data build`: the checks before any work (the device, the weights each learned stage runs, fetched
    once here when missing, the backends load, the policy parses), then the build on the runner the job asks for;
    returns the summary."""
    on_cluster = bool(job.ray_address or os.environ.get("RAY_ADDRESS"))
    models = choose_models(job.config, learned_defaults=job.source != DEMO_SOURCE, on_cluster=on_cluster)
    for line in models.lines():
        log(line)
    if models.random_weights:
        log("WARNING: this build runs randomly initialised weights (tests and benchmarks only); every row says so")
    preflight(models.config, on_cluster=on_cluster)
    policy = Policy.load(job.policy)
    source = str(demo_source_for(job.out, log)) if job.source == DEMO_SOURCE else job.source
    with make_runner(job.no_ray, job.ray_address, job.num_cpus) as runner:
        return build(source, job.out, models.config, runner, backgrounds=job.backgrounds, overwrite=job.overwrite,
                     keep_work=job.keep_work, resources=job.resources, policy=policy, models=models)


def build(source: str, out: str | Path, config: BuildConfig, runner: Runner, backgrounds: str | None = None,
          overwrite: bool = False, keep_work: bool = False, resources: Resources | None = None,
          policy: Policy | None = None, clip: ClipChoice | None = None, models: Models | None = None) -> dict:
    """Build a dataset at `out`, or resume the build of it there; returns the summary (also `_summary.json`).

    Resuming skips every input and sample an earlier run of the same build committed (see `datagen.resume`).
    `out` may be a pyarrow filesystem URI (`s3://bucket/ds`): the build then works in a local staging folder and
    publishes each commit to it (see `datagen.publish`). `models`: what the learned stages run (`choose_models`);
    by default `auto` is the weight-free path, as for the built-in demo. `clip` overrides its CLIP choice.
    """
    destination = str(out)
    remote = destination if storage.is_remote(destination) else None
    out = staging_dir(remote) if remote else Path(out)
    policy = policy or Policy.default()
    load_clean_plate(config.clean_plate)  # an unknown --clean-plate stops the build before any work
    models = models or choose_models(config, learned_defaults=False)
    config, clip = models.config, clip or models.clip
    plans = plan_stages(config, resources or Resources(), learned_stages(config, clip), runner.gpus,
                        runner.cpus)
    wall = time.perf_counter()
    seconds: Counter[str] = Counter()

    start = time.perf_counter()
    found = [discover_source(source, frame_folders=config.frame_folders)]
    if backgrounds:
        found.append(discover_source(backgrounds, pool="backgrounds", role=Role.BACKGROUND,
                                     frame_folders=config.frame_folders))
    items = [item for discovery in found for item in discovery.items]
    if not items:
        raise ConfigError(f"--source: no inputs found in {source!r}")
    seconds[Stage.DISCOVER.value] = time.perf_counter() - start

    folder = BuildFolder(out, Mirror(remote, out) if remote else None)
    record = build_record(source, backgrounds, config, clip.spec, items, models.record())
    committed = folder.open(record, overwrite)
    try:
        if committed.complete:
            return {**io.read_summary(out), "already_complete": True}
        summary, input_rows = _run(folder, committed, items, config, runner, plans, policy, clip, seconds, remote)
        summary["backends"]["models"] = models.stages
        summary["random_weights"] = models.random_weights
    finally:
        folder.close()
    if not keep_work:
        shutil.rmtree(folder.work, ignore_errors=True)
    summary.update(source=source, backgrounds=backgrounds, out=destination)
    summary["listing"] = {"objects": sum(d.listed_objects for d in found), "pages": sum(d.list_pages for d in found)}
    summary["seconds"]["wall"] = round(time.perf_counter() - wall, 3)
    summary["complete"] = True  # in the summary written last: a rerun of a complete build has nothing to do
    apply_policy(out, policy, summary, input_rows)  # the dataset-wide rules (near-duplicates) and the funnel
    folder.publish_final()
    return io.read_summary(out)


def _run(folder: BuildFolder, committed: Committed, items: list[SourceItem], config: BuildConfig, runner: Runner,
         plans: dict[StageName, StagePlan], policy: Policy, clip: ClipChoice, seconds: Counter,
         remote: str | None) -> tuple[dict, list[dict]]:
    """The two phases (inputs, then samples), each skipping what is committed; returns the summary and the
    `inputs.parquet` rows for the policy to decide and write."""
    out = folder.out
    rows = [InputRow.discovered(item) for item in items]
    done = {row.input_id: row for row in rows if not row.ok}
    done.update(committed.inputs)
    pending = [row for row in rows if row.input_id not in done]
    start = time.perf_counter()
    for batch in runner.run(pending, input_stages(config, folder.work, plans, remote), "decode + matte"):
        for row in batch:
            folder.commit_input(row)
            done[row.input_id] = row
    seconds["phase_inputs_wall"] = time.perf_counter() - start
    inputs = [done[row.input_id] for row in rows]
    mark_copies(inputs)  # the same content reached twice (a video and its frames): built once

    start = time.perf_counter()
    sample_plans = plan_samples(inputs, config)
    seconds[Stage.PLAN.value] = time.perf_counter() - start

    sample_failures: list[SampleRow] = []
    start = time.perf_counter()
    todo = [plan for plan in sample_plans if plan.sample_id not in committed.samples]
    for batch in runner.run(todo, sample_stages(config, out, plans, clip, remote), "compose + caption + score"):
        finished = [row for row in batch if row.ok]
        if finished:
            manifest_rows = [row.manifest_row(config, policy.decide({KIND: row.kind.value, **row.scores,
                                                                     CAPTION_LAYERS: row.caption_layers}))
                             for row in finished]
            folder.commit_samples(manifest_rows, part_record(finished))
        for row in batch:
            if not row.ok:
                sample_failures.append(row)
                seconds.update(row.seconds)
    seconds["phase_samples_wall"] = time.perf_counter() - start

    unscored: Counter[tuple[str, str]] = Counter()  # (score column, why it is null) -> samples
    devices: Counter[tuple[str, str]] = Counter()  # (stage, device its backend ran on) -> rows
    for part in folder.part_records():
        unscored.update({(column, why): count for column, why, count in part["unscored"]})
        devices.update({(stage, device): count for stage, device, count in part["devices"]})
        seconds.update(part["seconds"])
    for row in inputs:
        seconds.update(row.seconds)
        devices.update(row.devices.items())
    # every committed sample, this run's and earlier ones': only the columns the summary counts (not the embeddings)
    samples = io.read_parts(out, list(SUMMARY_COLUMNS)).to_pylist()

    input_rows = input_states(inputs, samples, sample_failures, config)
    failures = failure_rows(input_rows, inputs, sample_failures)
    io.write_failures(out, failures)
    summary = make_summary(str(out), config, runner.name, input_rows, samples, failures, seconds)
    if not samples:
        summary["samples"]["none_because"] = nothing_made(inputs, len(sample_plans))
    summary["backends"]["clip"] = {"requested": config.clip, "spec": clip.spec, "weights": clip.weights,
                                   "unavailable": clip.unavailable}
    summary["unscored"] = unscored_summary(unscored)
    summary["scheduling"] = {stage.value: asdict(plan) for stage, plan in plans.items()}
    summary["backends"]["devices"] = device_summary(devices)
    summary["resumed"] = {"inputs_committed_before": len(committed.inputs),
                          "samples_committed_before": len(committed.samples & {p.sample_id for p in sample_plans})}
    return summary, input_rows
