"""Training from a manifest: batch plan, stages, exact resume, data-parallel Ray Train, the CLI commands, the
cogvideox-2b loading path, sampling outputs and eval."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
import torch
from conftest import TINY
from PIL import Image
from safetensors.torch import load_file
from test_trainer_export import cogvideox_folder
from typer.testing import CliRunner

import layerflow_model.data as data_module
from datagen.build import build as build_dataset
from datagen.config import BuildConfig
from datagen.demo import make_demo_source
from datagen.pipeline import LocalRunner
from layerflow_model.cache import EncoderCache
from layerflow_model.components import MODEL_FILE, OPTIMIZER_FILE, build, latest_checkpoint, load_checkpoint
from layerflow_model.config import SampleSettings, Stage, TrainConfig, preset
from layerflow_model.data import VIDEO_KINDS, BatchPlan, ClipStore, read_rows
from layerflow_model.evaluate import evaluate
from layerflow_model.layout import Task
from layerflow_model.logs import read_log
from layerflow_model.model import CONTENT, MOTION
from layerflow_model.sample import run_task
from layerflow_model.train import step_generator, train
from manifests.errors import ConfigError
from manifests.layers import Layer, SampleKind
from manifests.metrics import foreground_mask
from manifests.video_io import has_alpha, quantise, read_video, write_rgb_video

ALL_TASKS = {t.value: 1.0 for t in Task}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo source built small (32x32, 4 frames) with both splits holding videos and layered images."""
    root = tmp_path_factory.mktemp("model_data")
    make_demo_source(root / "src")
    # seed 8: the draw holds out two foreground videos, two background videos and one layered image (by content)
    config = BuildConfig(size=(32, 32), frames=4, seed=8, val_fraction=0.25, clip="none")
    build_dataset(str(root / "src"), root / "ds", config, LocalRunner())
    return root / "ds"


def tiny(**overrides):
    return preset("toy", **{**TINY, **overrides})


def train_config(dataset: Path, out: Path, **overrides) -> TrainConfig:
    values = {"manifest": str(dataset), "out": str(out), "steps": 4, "batch_size": 2, "lr": 1e-3, "warmup": 2,
              "checkpoint_every": 2, "task_weights": ALL_TASKS}
    return TrainConfig(**{**values, **overrides})


def test_rows_are_the_kept_samples_of_a_split(dataset):
    train_rows, val_rows = read_rows(str(dataset), "train"), read_rows(str(dataset), "val")
    assert train_rows and val_rows
    assert {r.kind for r in val_rows} >= {SampleKind.VIDEO_COPY_PASTE, SampleKind.IMAGE_FROZEN}
    assert len(read_rows(str(dataset), None)) == len(train_rows) + len(val_rows)
    assert not {r.sample_id for r in train_rows} & {r.sample_id for r in val_rows}


def test_batch_plan_is_a_pure_function_of_seed_and_step(dataset):
    rows = read_rows(str(dataset))
    plan = BatchPlan(rows, tiny(), Stage.CONTENT, 3, ALL_TASKS, seed=1)
    again = BatchPlan(rows, tiny(), Stage.CONTENT, 3, ALL_TASKS, seed=1)
    assert [plan.draw(s) for s in range(10)] == [again.draw(s) for s in range(10)]
    assert plan.draw(3) != plan.draw(4)
    assert BatchPlan(rows, tiny(), Stage.CONTENT, 3, ALL_TASKS, seed=2).draw(3) != plan.draw(3)


def test_batches_are_homogeneous_and_gate_motion_by_kind(dataset):
    rows = read_rows(str(dataset))
    content = BatchPlan(rows, tiny(), Stage.CONTENT, 3, ALL_TASKS, seed=0)
    seen = set()
    for step in range(30):
        batch = content.batch(step)
        assert len({p.row.kind for p in batch.picks}) == 1
        assert batch.motion == (batch.kind is SampleKind.IMAGE_FROZEN)  # motion on for frozen images only
        seen.add(batch.kind)
    assert seen == {r.kind for r in rows} and {SampleKind.VIDEO_COPY_PASTE, SampleKind.IMAGE_FROZEN} <= seen
    base = BatchPlan(rows, tiny(), Stage.BASE, 3, ALL_TASKS, seed=0)
    assert all(base.batch(s).kind in VIDEO_KINDS and not base.batch(s).motion for s in range(10))


def test_motion_stage_freezes_video_clips_to_one_frame(dataset):
    rows = read_rows(str(dataset))
    config = tiny()
    plan = BatchPlan(rows, config, Stage.MOTION, 2, ALL_TASKS, seed=0)
    store = ClipStore(str(dataset), config.height, config.width)
    video_steps = [s for s in range(20) if plan.batch(s).kind is SampleKind.VIDEO_COPY_PASTE]
    assert video_steps
    batch = plan.batch(video_steps[0])
    assert batch.motion and batch.frozen
    clips = batch.clips(store, config)  # (B, 4 * 2, 3, H, W): every sub-clip is one repeated frame
    per_slot = clips.view(2, 4, 2, 3, 16, 16)
    assert torch.equal(per_slot[:, :, 0], per_slot[:, :, 1])
    moving = BatchPlan(rows, config, Stage.BASE, 2, ALL_TASKS, seed=0).batch(0).clips(store, config)
    assert not torch.equal(moving.view(2, 4, 2, 3, 16, 16)[:, :, 0], moving.view(2, 4, 2, 3, 16, 16)[:, :, 1])


def test_task_weights_pick_the_tasks(dataset):
    plan = BatchPlan(read_rows(str(dataset)), tiny(), Stage.BASE, 2, {"decompose": 1.0, "generate": 0.0}, 0)
    assert {plan.batch(s).task for s in range(20)} == {Task.DECOMPOSE}


def test_clips_read_through_a_non_local_pyarrow_filesystem(dataset, monkeypatch, tmp_path):
    import fsspec
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    from manifests.dataset import Dataset

    local = ClipStore(str(dataset), 16, 16)
    row = read_rows(str(dataset))[0]
    expected = local.layers(row)
    remote = PyFileSystem(FSSpecHandler(fsspec.filesystem("file")))
    monkeypatch.setattr(data_module, "open_dataset",
                        lambda uri: Dataset(uri, remote, str(Path(uri).resolve()), tmp_path / "mirror"))
    rows = data_module.read_rows(str(dataset))
    store = data_module.ClipStore(str(dataset), 16, 16)
    assert not store.dataset.is_local
    got = store.layers(rows[0])
    store.close()
    for layer in Layer:
        assert np.array_equal(got[layer], expected[layer])
    assert isinstance(pafs.LocalFileSystem(), pafs.FileSystem)


def test_resumed_run_equals_the_uninterrupted_one(dataset, tmp_path):
    whole = train(train_config(dataset, tmp_path / "whole", ema=0.9), tiny(), progress=False)
    train(train_config(dataset, tmp_path / "split", steps=2, ema=0.9), tiny(), progress=False)  # "crashes" at 2
    resumed = train(train_config(dataset, tmp_path / "split", ema=0.9), tiny(), resume=True, progress=False)
    assert resumed.steps == 2  # only the missing steps ran
    a, b = load_file(whole.checkpoint / MODEL_FILE), load_file(resumed.checkpoint / MODEL_FILE)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ema_a, ema_b = load_file(whole.checkpoint / "ema.safetensors"), load_file(resumed.checkpoint / "ema.safetensors")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    opt_a = torch.load(whole.checkpoint / OPTIMIZER_FILE, weights_only=True)
    opt_b = torch.load(resumed.checkpoint / OPTIMIZER_FILE, weights_only=True)
    assert all(torch.equal(opt_a["state"][k]["exp_avg"], opt_b["state"][k]["exp_avg"]) for k in opt_a["state"])
    start = load_file(latest_checkpoint(tmp_path / "split").parent / "checkpoint-0000002" / MODEL_FILE)
    assert any(not torch.equal(start[k], b[k]) for k in b)  # and the resumed steps did train
    timeless = [[{k: v for k, v in r.items() if k != "samples_per_second"} for r in read_log(result.loss_log)]
                for result in (whole, resumed)]
    assert timeless[0] == timeless[1] and [r["step"] for r in timeless[1]] == [1, 2, 3, 4]


def test_the_run_logs_every_step_to_jsonl_and_tensorboard_and_plots_the_curves(dataset, tmp_path):
    result = train(train_config(dataset, tmp_path / "run", steps=3, warmup=2, grad_clip=1e-3), tiny(), progress=False)
    records = read_log(result.loss_log)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert [r["lr"] for r in records] == pytest.approx([5e-4, 1e-3, 1e-3])  # the warm-up, as applied
    assert all(r["task"] in ALL_TASKS and r["loss"] > 0 and r["grad_norm"] > 1e-3 for r in records)  # pre-clip norm
    assert result.loss_log.parent == tmp_path / "run" and records[-1]["loss"] == pytest.approx(result.last_loss)
    page = result.plot.read_text()
    assert page.count("<svg") == 3 and "<polyline" in page and "learning rate" in page
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_an_existing_run_needs_resume(dataset, tmp_path):
    train(train_config(dataset, tmp_path / "run", steps=1), tiny(), progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(train_config(dataset, tmp_path / "run", steps=2), tiny(), progress=False)


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in after if not torch.equal(before[k], after[k])}


def test_stages_chain_and_train_only_their_adapter(dataset, tmp_path):
    base = train(train_config(dataset, tmp_path / "base"), tiny(), progress=False)
    motion = train(train_config(dataset, tmp_path / "motion", stage="motion", init=str(base.checkpoint)),
                   progress=False)
    content = train(train_config(dataset, tmp_path / "content", stage="content", init=str(motion.checkpoint)),
                    progress=False)
    w_base, w_motion, w_content = (load_file(r.checkpoint / MODEL_FILE) for r in (base, motion, content))
    changed = _changed(w_base, w_motion)
    assert changed and all(f".{MOTION}." in k for k in changed)
    changed = _changed(w_motion, w_content)
    embeddings = {k for k in changed if any(e in k for e in ("patch_embed.layers.", "patch_embed.given_embedding"))}
    assert embeddings and all(f".{CONTENT}." in k for k in changed - embeddings)  # content: adapter + embeddings
    assert not any("given_projection" in k for k in changed)  # the toy's projection stays as base trained it
    assert any("given_projection" in k and w_base[k].abs().sum() > 0 for k in w_base)  # zero at init: base trains it
    assert motion.trained_parameters < content.trained_parameters < base.trained_parameters


def test_motion_stage_needs_an_init_checkpoint(dataset, tmp_path):
    with pytest.raises(ConfigError, match="init"):
        train_config(dataset, tmp_path / "m", stage="motion")


def test_checkpoint_reloads_to_the_same_model(dataset, tmp_path):
    result = train(train_config(dataset, tmp_path / "run", steps=1), tiny(), progress=False)
    parts, state = load_checkpoint(result.checkpoint, use_ema=False)
    assert state["step"] == 1
    saved = load_file(result.checkpoint / MODEL_FILE)
    current = parts.model.saved_state()
    assert all(torch.equal(saved[k], current[k]) for k in saved)
    config = json.loads((result.checkpoint / "config.json").read_text())
    assert config["model"]["depth"] == 2 and config["train"]["stage"] == "base"
    optimizer = torch.load(result.checkpoint / OPTIMIZER_FILE, weights_only=True)
    assert tuple(optimizer["param_groups"][0]["betas"]) == (0.9, 0.95)


def test_the_toy_sweep_bench_packs_a_dataset_and_reports_held_out_decomposition(dataset, tmp_path):
    bench = Path(__file__).resolve().parents[1] / "bench" / "toy_sweep.py"
    packed = tmp_path / "pack.pt"
    counts = subprocess.run([sys.executable, str(bench), "pack", str(dataset), str(packed)], check=True,
                            capture_output=True, text=True).stdout
    assert json.loads(counts.strip().splitlines()[-1]) == {split: len(read_rows(dataset, split))
                                                          for split in ("train", "val")}
    out = subprocess.run([sys.executable, str(bench), "run", "smoke", "2", str(packed), "depth=1", "evals=1",
                          "nseeds=1", "given_projection=False"], check=True, capture_output=True, text=True).stdout
    record = json.loads(out.strip().splitlines()[-1])
    assert record["step"] == 2 and record["options"] == ["depth=1", "evals=1", "nseeds=1", "given_projection=False"]
    assert 0.0 <= record["val_alpha_iou"] <= 1.0 and 0.0 <= record["train_alpha_iou"] <= 1.0
    assert record["val_bg_psnr_inside"] > 0


def test_step_generators_keep_their_seeds():
    # Resuming a run trained before any change depends on these exact numbers.
    assert step_generator(2, 3, 1).initial_seed() == 2 * 1_000_003 + 3 * 1009 + 1
    assert step_generator(0, 0, 0).initial_seed() == 0
    assert torch.equal(torch.rand(3, generator=step_generator(1, 5, 0)),
                       torch.rand(3, generator=torch.Generator().manual_seed(1_005_048)))


def test_encoder_cache_computes_each_key_once(tmp_path):
    cache = EncoderCache(tmp_path, "encoder-a")
    calls = []

    def compute(indices):
        calls.append(list(indices))
        return torch.stack([torch.full((2,), float(i)) for i in indices])

    first = cache.get_or_compute(["x", "y"], compute)
    second = cache.get_or_compute(["y", "x", "z"], compute)
    assert calls == [[0, 1], [2]]
    assert torch.equal(second[0], first[1]) and torch.equal(second[1], first[0])
    assert EncoderCache(tmp_path, "encoder-b").get("x") is None  # another encoder never reads these values


def test_training_with_the_encoder_cache_matches_training_without(dataset, tmp_path):
    plain = train(train_config(dataset, tmp_path / "plain", steps=2), tiny(), progress=False)
    cached = train(train_config(dataset, tmp_path / "cached", steps=2, cache_dir=str(tmp_path / "cache")), tiny(),
                   progress=False)
    a, b = load_file(plain.checkpoint / MODEL_FILE), load_file(cached.checkpoint / MODEL_FILE)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert any((tmp_path / "cache" / "latents").rglob("*.safetensors"))


def test_ray_train_two_cpu_workers(dataset, tmp_path):
    from layerflow_model.ray_train import train_distributed

    config = train_config(dataset, tmp_path / "ddp", steps=2, workers=2)
    result = train_distributed(config, tiny(), progress=False)
    assert result.checkpoint.exists() and result.steps == 2
    assert np.isfinite(result.last_loss)
    fresh = build(tiny()).model.saved_state()
    trained = load_file(result.checkpoint / MODEL_FILE)
    assert _changed(fresh, trained)


def test_run_task_gives_every_layer_and_keeps_the_input(dataset):
    parts = build(tiny())
    row = read_rows(str(dataset), "val")[0]
    truth = data_module.crop(ClipStore(str(dataset), 16, 16).layers(row), 0, 2)
    settings = SampleSettings(steps=2, cfg=2.0)
    out = run_task(parts, Task.DECOMPOSE, row.captions, {Layer.BLENDED: truth[Layer.BLENDED]}, settings)
    assert set(out) == set(Layer)
    assert np.allclose(out[Layer.BLENDED], truth[Layer.BLENDED], atol=1e-6)
    assert out[Layer.ALPHA].shape == (2, 16, 16) and 0 <= out[Layer.ALPHA].min() <= out[Layer.ALPHA].max() <= 1
    with pytest.raises(ConfigError, match="background"):
        run_task(parts, Task.BG2FG, row.captions, None, settings)


def test_eval_reports_the_model_next_to_both_baselines(dataset, tmp_path):
    result = train(train_config(dataset, tmp_path / "run", steps=1), tiny(), progress=False)
    report = evaluate(result.checkpoint, str(dataset), "val", SampleSettings(steps=2), limit=2, seeds=1,
                      progress=False)
    metrics = report.summary["metrics"]
    rows = read_rows(str(dataset), "val")[:2]
    assert report.summary["samples"] == len(rows)
    # alpha = 0 never overlaps the foreground: it scores 1 on the frames where the true matte is empty, else 0
    config = tiny()
    store = ClipStore(str(dataset), config.height, config.width)
    empty = [np.mean([not foreground_mask(frame).any() for frame in
                      data_module.crop(store.layers(row), 0, config.frames)[Layer.ALPHA]]) for row in rows]
    trivial = metrics["trivial"]["decompose"]
    assert trivial["alpha_iou"]["mean"] == pytest.approx(np.mean(empty))
    assert "generate" not in metrics["trivial"]  # a trivial predictor generates nothing
    assert trivial["bg_psnr_outside"]["mean"] > trivial["bg_psnr_inside"]["mean"]
    for model in ("trained", "untrained"):
        for task, names in metrics[model].items():
            # no text scorer was passed, so only text alignment is missing
            assert all((stats["mean"] is None) == name.startswith("clip_") for name, stats in names.items()), task
    assert set(report.summary["beats"]["decompose"]["alpha_iou"]) == {"untrained", "trivial"}
    assert "decompose alpha_iou" in report.table()


# The CLI --------------------------------------------------------------------------------------------------------


def _cli(args: list[str]):
    from cli import app

    result = CliRunner().invoke(app, args, catch_exceptions=False)
    return result


def test_cli_train_sample_and_eval(dataset, tmp_path, monkeypatch):
    import cli
    import layerflow_model.config as config_module

    monkeypatch.setitem(config_module.PRESETS, "toy", tiny())
    run = tmp_path / "run"
    result = _cli(["train", "--manifest", str(dataset), "--out", str(run), "--steps", "2", "--batch-size", "2",
                   "--checkpoint-every", "1", "--mix", "video_copy_paste=1,image_frozen=1"])
    assert result.exit_code == 0, result.output
    assert "mix: video_copy_paste 1.00" in result.output  # the base stage leaves out frozen images
    assert (run / "checkpoint-0000002" / MODEL_FILE).exists()

    row = read_rows(str(dataset), "val")[0]
    blend = ClipStore(str(dataset), 16, 16).layers(row)[Layer.BLENDED]
    clip = tmp_path / "blend.mp4"
    write_rgb_video(clip, quantise(blend), 8.0)
    out = tmp_path / "decomposed"
    result = _cli(["sample", "--checkpoint", str(run), "--task", "decompose", "--input", str(clip), "--out", str(out),
                   "--prompts", "a cat; a lawn", "--steps", "2"])
    assert result.exit_code == 0, result.output
    pngs = sorted((out / "foreground_rgba").glob("*.png"))
    assert len(pngs) == 2 and Image.open(pngs[0]).mode == "RGBA"
    assert has_alpha(out / "foreground.webm") and read_video(out / "foreground.webm", "rgba").shape == (2, 16, 16, 4)
    assert read_video(out / "background.mp4").shape == (2, 16, 16, 3)
    assert (out / "preview.png").exists()
    info = json.loads((out / "sample.json").read_text())
    assert info["task"] == "decompose" and info["prompts"] == ["0, a cat", "1, a lawn", ""]

    generated = tmp_path / "generated"
    result = _cli(["sample", "--checkpoint", str(run), "--task", "generate", "--out", str(generated),
                   "--prompts", "a cat; a lawn; a cat on a lawn", "--steps", "2", "--sampler", "dpm"])
    assert result.exit_code == 0, result.output
    assert (generated / "blended.mp4").exists()

    monkeypatch.setattr(cli, "console", cli.Console(stderr=True, width=200))
    result = _cli(["eval", "--checkpoint", str(run), "--manifest", str(dataset), "--steps", "2", "--limit", "1",
                   "--seeds", "1"])
    assert result.exit_code == 0, result.output
    line = [text for text in result.stdout.splitlines() if text.startswith("{")][-1]
    assert json.loads(line)["samples"] == 1 and json.loads(line)["seeds"] == 1


def test_cli_sample_errors_are_one_line(dataset, tmp_path):
    import subprocess
    import sys

    missing = subprocess.run([sys.executable, "-c", "from cli import main; main()", "sample", "--checkpoint",
                              str(tmp_path / "nothing"), "--task", "generate", "--out", str(tmp_path / "o")],
                             capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert missing.returncode == 2
    assert "no checkpoint there" in missing.stderr and "Traceback" not in missing.stderr


# The real path, without weights ----------------------------------------------------------------------------------


def test_cogvideox_2b_architecture_at_reduced_depth_loads_trains_and_samples(tmp_path):
    folder = cogvideox_folder(tmp_path / "CogVideoX-2b")
    config = preset("cogvideox-2b", pretrained=str(folder), depth=2, height=32, width=48, frames=8, text_tokens=16)
    parts = build(config)
    transformer = parts.model.transformer
    assert transformer.config.num_attention_heads == 30 and transformer.config.attention_head_dim == 64
    assert transformer.config.in_channels == 16 and transformer.config.text_embed_dim == 4096
    assert parts.latents.latent_frames(8) == 2 == config.latent_frames
    # LoRAs sit in every 6th block (here: the last one, as the model is shallower than 6).
    lora = {n.split("transformer_blocks.")[1].split(".")[0] for n in parts.model.stage_parameters(Stage.CONTENT)
            if "transformer_blocks." in n}
    assert lora == {"1"}
    clip = torch.rand(1, 4 * 8, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        latents = parts.encode_clip(clip, torch.Generator().manual_seed(0))
    assert latents.shape == (1, 4 * 2, 16, 4, 6)
    text = parts.encode_prompts([["0, a cat", "1, a lawn", "2, a cat on a lawn"]])
    assert text.shape == (1, 48, 4096)
    from layerflow_model.diffusion import Diffusion
    from layerflow_model.layout import condition_mask

    trained = parts.model.freeze_for(Stage.CONTENT)
    loss = Diffusion(config.snr_shift).loss(parts.model, latents, text, condition_mask(config.layout, Task.FG2BG, 2))
    loss.backward()
    assert all(p.grad is not None for p in trained.values())
    out = run_task(parts, Task.GENERATE, {Layer.FOREGROUND: "a cat"}, None, SampleSettings(steps=1, cfg=1.0))
    assert out[Layer.BLENDED].shape == (8, 32, 48, 3)


def _weights_and_losses(result) -> tuple[dict[str, torch.Tensor], list[float]]:
    return load_file(result.checkpoint / MODEL_FILE), [r["loss"] for r in read_log(result.loss_log)]


def test_gradient_accumulation_trains_on_the_batch_it_splits(dataset, tmp_path):
    whole = train(train_config(dataset, tmp_path / "whole", steps=2, batch_size=4), tiny(), progress=False)
    split = train(train_config(dataset, tmp_path / "split", steps=2, batch_size=2, grad_accum=2), tiny(),
                  progress=False)
    (a, loss_a), (b, loss_b) = _weights_and_losses(whole), _weights_and_losses(split)
    assert len(loss_b) == 2  # the loss log counts optimizer steps, not micro-batches
    assert np.allclose(loss_a, loss_b, atol=1e-6)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a if not _float_noise(k))


def _float_noise(name: str) -> bool:
    """A key projection's bias: its gradient is zero in exact arithmetic (it shifts every logit of a query alike),
    so Adam's normalised step follows float rounding, which summation order changes."""
    return "norm_k.bias" in name


def test_loader_workers_give_the_batches_of_the_main_process(dataset, tmp_path):
    plain = train(train_config(dataset, tmp_path / "plain", steps=2), tiny(), progress=False)
    loaded = train(train_config(dataset, tmp_path / "loaded", steps=2, loader_workers=1, prefetch=1), tiny(),
                   progress=False)
    assert _weights_and_losses(plain)[1] == _weights_and_losses(loaded)[1]


def test_precompute_caches_every_crop_the_plan_can_draw(dataset, tmp_path):
    config = tiny()
    plan = BatchPlan(read_rows(str(dataset)), config, Stage.BASE, 2, ALL_TASKS, seed=0, crop_stride=2)
    drawn = {p.key(config) for step in range(50) for p in plan.draw(step)[2]}
    listed = {p.key(config) for row in plan.rows() for p in plan.crops(row)}
    assert drawn <= listed and all(p.start % 2 == 0 for row in plan.rows() for p in plan.crops(row))
    run = train_config(dataset, tmp_path / "run", steps=1, cache_dir=str(tmp_path / "cache"), precompute=True,
                       crop_stride=2)
    train(run, config, progress=False)
    assert len(list((tmp_path / "cache" / "latents").rglob("*.safetensors"))) == len(listed)


def test_the_2b_path_with_bf16_encoders_precompute_accumulation_and_checkpointing_matches_the_plain_path(
        dataset, tmp_path):
    """The cogvideox-2b geometry at 2 blocks and 32x32, 1 frame per layer: bf16 T5 and VAE, precomputed posteriors
    and embeddings, 2 micro-batches of 2 and gradient checkpointing, against fp32 encoders, no cache and one batch
    of 4. Measured differences (from the bf16 encoders' rounding): loss and grad norm 5e-5 relative, weight updates
    2.4 % over the whole model and up to 4 % per tensor, but 10 % for a tensor whose gradient entries are near zero
    (Adam's first steps normalise each entry, so rounding that flips a tiny gradient's sign flips its update:
    attn1.norm_q.bias on the test dataset), sampled pixels 0.012; the bounds leave room above."""
    folder = cogvideox_folder(tmp_path / "CogVideoX-2b")
    two_b = {"pretrained": str(folder), "depth": 2, "height": 32, "width": 32, "frames": 1, "text_tokens": 8}
    fitted = preset("cogvideox-2b", **two_b)
    assert fitted.encoder_dtype.value == "bf16" and fitted.gradient_checkpointing
    plain_model = preset("cogvideox-2b", **two_b, encoder_dtype="fp32", gradient_checkpointing=False)
    steps = {"steps": 2, "checkpoint_every": 2, "lr": 1e-4}
    plain = train(train_config(dataset, tmp_path / "plain", batch_size=4, **steps), plain_model, progress=False)
    fit = train(train_config(dataset, tmp_path / "fit", batch_size=2, grad_accum=2, cache_dir=str(tmp_path / "c"),
                             precompute=True, **steps), fitted, progress=False)
    assert load_checkpoint(fit.checkpoint)[0].text.model.dtype == torch.bfloat16
    logs = [read_log(r.loss_log) for r in (plain, fit)]
    for key in ("loss", "grad_norm"):
        assert np.allclose(*([r[key] for r in log] for log in logs), rtol=1e-3), key
    (a, _), (b, _) = _weights_and_losses(plain), _weights_and_losses(fit)
    fresh = build(plain_model).model.saved_state()
    apart, moved = 0.0, 0.0
    for k in filter(lambda k: not _float_noise(k), a):
        update_a, update_b = a[k] - fresh[k], b[k] - fresh[k]
        assert (update_a - update_b).norm() <= 0.2 * update_a.norm() + 1e-8, k
        apart, moved = apart + float((update_a - update_b).square().sum()), moved + float(update_a.square().sum())
    assert apart ** 0.5 <= 0.1 * moved ** 0.5  # the whole update: 2.4 % apart on the test dataset
    settings = SampleSettings(steps=2, cfg=1.0, precision="fp32")
    outputs = [run_task(load_checkpoint(r.checkpoint)[0], Task.GENERATE, {Layer.FOREGROUND: "a cat"}, None, settings)
               for r in (plain, fit)]
    for layer in outputs[0]:
        assert np.abs(outputs[0][layer] - outputs[1][layer]).max() <= 0.03, layer
