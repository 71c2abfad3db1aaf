"""Scores written by `build`, and `filter` re-deciding `keep` from them without loading any model."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from datagen.build import build
from datagen.pipeline import LocalRunner
from datagen.rows import SampleInput, SampleRow
from datagen.sources import SourceItem
from datagen.stages import ClipStage, ScoreStage
from filters.apply import POLICY_FILE, apply_policy
from filters.audit import validate_dataset
from filters.clip import resolve_clip
from filters.policy import Policy
from manifests import io
from manifests.layers import InputKind, Layer, SampleKind
from manifests.schema import CLIP_COLUMNS, PLATE_SCORES, SCORES, media_uri
from manifests.video_io import write_rgb_video

REPO = Path(__file__).resolve().parents[1]


def pixel_policy() -> Policy:
    """The default policy without its CLIP rules: a random tiny CLIP model gives meaningless cosines."""
    default = Policy.default()
    text = "\n".join(
        f'[[rule]]\nscore = "{rule.score}"\n{"below" if rule.op.value == "<" else "above"} = {rule.bound}\n'
        f"allow = {json.dumps(sorted(kind.value for kind in rule.allow))}\n"
        for rule in default.rules if not rule.score.startswith("clip_"))
    return Policy.from_toml(text, "pixel rules")


@pytest.fixture
def scored(tiny_source, tmp_path, small_config, tiny_clip):
    """The tiny source built with the tiny CLIP model (loaded from its weights file like real weights)."""
    out = tmp_path / "ds"
    config = replace(small_config, clip=tiny_clip)
    summary = build(str(tiny_source), out, config, LocalRunner(progress=False), clip=resolve_clip(tiny_clip),
                    policy=pixel_policy())
    return out, summary


def rows(out: Path) -> list[dict]:
    return io.read_manifest(out).sort_by("sample_id").to_pylist()


def test_build_writes_every_score_column(scored):
    out, summary = scored
    table = rows(out)
    assert len(table) == 8
    for row in table:
        missing = [name for name in SCORES if row[name] is None]
        # the RGBA sticker's sample has no captions, so only its text scores may be null; only a decomposed sample
        # has a clean plate to score
        plate = set() if row["kind"] == "video_decomposed" else set(PLATE_SCORES)
        assert set(missing) <= {"clip_text_foreground", "clip_text_background", "clip_text_blended"} | plate, missing
        assert row["clip_model"].startswith("layerflow-test-tiny:")
        assert np.linalg.norm(row["clip_embedding"]) == pytest.approx(1.0, abs=1e-5)
        # float32: with every cosine near 1, the mean may round just below the min
        assert -1.0 <= row["clip_consistency_min"] <= row["clip_consistency_mean"] + 1e-6 <= 1.0 + 2e-6
    assert summary["backends"]["clip"]["unavailable"] is None
    assert summary["backends"]["devices"]["clip"] == {"cpu": 8}  # where the scorer really ran (no GPU here)
    assert summary["unscored"]["clip_text_foreground"]["why"] == "no caption for this layer"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_clip_on_cuda_without_a_gpu_is_refused_not_nulled(tmp_path, tiny_clip):
    from manifests.errors import ConfigError

    choice = resolve_clip(tiny_clip)
    with pytest.raises(ConfigError, match="--device cuda: no CUDA GPU is visible"):
        ClipStage(str(tmp_path), choice.arch, choice.weights, choice.tag, None, device="cuda")


def test_frozen_samples_are_flagged_static_and_kept(scored):
    out, _ = scored
    frozen = [row for row in rows(out) if row["kind"] == "image_frozen"]
    assert len(frozen) == 2
    for row in frozen:
        assert row["keep"], row["reject_reasons"]
        assert {"ssim_foreground_mean>0.995", "ssim_blended_mean>0.995"} <= set(row["flags"])
        assert row["ssim_blended_mean"] > 0.995 and row["alpha_iou_min"] == 1.0
    moving = [row for row in rows(out) if row["kind"] == "video_copy_paste"]
    assert all(row["ssim_foreground_mean"] < 0.99 for row in moving)  # the disk moves
    assert not any("ssim_foreground_mean>0.995" in row["flags"] + row["reject_reasons"] for row in moving)


def test_without_clip_weights_clip_columns_are_null_and_the_summary_says_why(tiny_source, tmp_path, small_config):
    out = tmp_path / "ds"
    summary = build(str(tiny_source), out, replace(small_config, clip="none"), LocalRunner(progress=False))
    assert all(row[name] is None for row in rows(out) for name in CLIP_COLUMNS)
    assert all(row["clip_embedding"] is None and row["duplicate_of"] is None for row in rows(out))
    assert summary["unscored"]["clip_text_blended"] == {"samples": 8, "why": "CLIP scoring is off (--clip none)"}
    assert summary["policy"]["funnel"]["unscored_why"]["clip_text_blended"] == "CLIP scoring is off (--clip none)"
    assert all(row["recompose_psnr"] is not None for row in rows(out))


def test_default_clip_without_cached_weights_is_unavailable_offline(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path))
    choice = resolve_clip("auto")
    assert choice.weights is None and "not in the local cache" in choice.unavailable


def test_a_corrupted_blended_layer_fails_the_recomposition_bound(scored, small_config):
    out, _ = scored
    row = rows(out)[0]
    assert row["recompose_psnr"] > 30
    blended = io.read_layers(out, row["sample_id"])[Layer.BLENDED]
    noise = np.random.default_rng(0).integers(-60, 61, blended.shape)
    corrupted = np.clip(blended.astype(int) + noise, 0, 255).astype(np.uint8)
    write_rgb_video(io.resolve_media(out, media_uri(row["sample_id"], Layer.BLENDED)), corrupted, small_config.fps)
    given = SampleInput(item=SourceItem("x", "/data/x.mp4", InputKind.VIDEO), kind=InputKind.VIDEO, clip_path=None,
                        matting=None)
    rescored = SampleRow(sample_id=row["sample_id"], kind=SampleKind(row["kind"]), split=row["split"], fg=given,
                         bg=given, bg_clip_path="")
    ScoreStage(small_config, str(out)).process(rescored)
    assert rescored.scores["recompose_psnr"] < 30
    assert "recompose_psnr<30" in Policy.default().decide({**row, **rescored.scores}).reject_reasons
    assert any("recomposition PSNR" in problem for problem in validate_dataset(out).problems)


def test_filter_loads_no_model(scored, monkeypatch, tmp_path):
    import open_clip

    import filters.clip

    def refuse(*args, **kwargs):
        raise AssertionError("filter must not construct a model")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", refuse)
    monkeypatch.setattr(open_clip, "create_model", refuse)
    monkeypatch.setattr(filters.clip.ClipScorer, "__init__", refuse)
    out, _ = scored
    strict = tmp_path / "strict.toml"
    strict.write_text('[[rule]]\nscore = "alpha_coverage_mean"\nbelow = 0.99\nwhy = "everything goes"\n')
    result = apply_policy(out, Policy.load(strict))
    assert result.kept == 0 and result.steps[0].alone == 8
    assert all(row["reject_reasons"] == ["alpha_coverage_mean<0.99"] for row in rows(out))


def test_filter_in_a_fresh_interpreter_imports_no_model_library(scored, tmp_path):
    out, _ = scored
    (tmp_path / "pixel.toml").write_text(pixel_policy().text)
    probe = ("import sys; sys.argv = ['layerflow-data', 'filter', sys.argv[1], '--policy', sys.argv[2]]; import cli\n"
             "try:\n    cli.main()\nexcept SystemExit as exc:\n    assert not exc.code\n"
             "print(sorted(m for m in ('torch', 'open_clip', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe, str(out), str(tmp_path / "pixel.toml")], capture_output=True,
                          text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert "kept 8 of 8 samples" in done.stdout


def test_filter_round_trip_updates_inputs_summary_and_policy_file(scored, tmp_path):
    out, _ = scored
    strict = tmp_path / "strict.toml"
    strict.write_text('[[rule]]\nscore = "recompose_psnr"\nbelow = 1000\n')
    apply_policy(out, Policy.load(strict))
    summary = io.read_summary(out)
    assert summary["samples"]["kept"] == 0 and summary["samples"]["rejected"] == 8
    assert summary["reject_reasons"] == {"recompose_psnr<1000": 8}
    assert summary["policy"]["source"] == str(strict)
    assert (out / POLICY_FILE).read_text() == strict.read_text()
    states = {row["state"] for row in io.read_inputs(out).to_pylist()}
    assert states == {"rejected"}
    assert summary["inputs"]["rejected"] == summary["inputs"]["discovered"] == 6
    assert validate_dataset(out).ok  # the stored keep agrees with the policy now in the dataset

    apply_policy(out, pixel_policy())
    assert io.read_summary(out)["samples"]["kept"] == 8
    assert {row["state"] for row in io.read_inputs(out).to_pylist()} == {"used"}


def test_near_duplicates_are_rejected_and_point_at_a_kept_sample(scored, tmp_path):
    out, _ = scored
    everything = tmp_path / "dups.toml"
    everything.write_text("[duplicates]\nclip_cosine_above = -1.0\n")  # every pair counts as a duplicate
    result = apply_policy(out, Policy.load(everything))
    table = rows(out)
    first = table[0]["sample_id"]
    assert result.kept == 1 and table[0]["keep"] and table[0]["duplicate_of"] is None
    assert all(row["duplicate_of"] == first and not row["keep"] for row in table[1:])
    assert all(row["reject_reasons"] == ["clip_duplicate_cosine>-1"] for row in table[1:])


def test_filter_json_funnel_from_the_command_line(scored, monkeypatch, capsys):
    import cli

    out, _ = scored
    monkeypatch.setattr(sys, "argv", ["layerflow-data", "filter", str(out), "--json"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert not exit_info.value.code
    funnel = json.loads(capsys.readouterr().out)
    assert funnel["total"] == 8 and [s["rule"] for s in funnel["steps"]][0] == "recompose_psnr<30"


def test_the_funnel_counts_no_sample_unscored_for_duplicates_when_every_embedding_is_there(scored, tmp_path):
    out, _ = scored
    assert all(row["clip_embedding"] for row in rows(out))
    policy = tmp_path / "dups.toml"
    policy.write_text("[duplicates]\nclip_cosine_above = 0.999\n")
    [step] = apply_policy(out, Policy.load(policy)).steps
    assert step.rule == "clip_duplicate_cosine>0.999" and step.unscored == 0
    assert io.read_summary(out)["policy"]["funnel"]["steps"][0]["unscored"] == 0
