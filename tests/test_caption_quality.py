"""Captions that training can use: degenerate generations are retried once and else recorded as null with a reason,
the manifest counts the captioned layers and says why the others are missing, the default policy flags incomplete
samples, and `train` refuses a dataset without a single caption unless told otherwise."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fake_models import tiny_blip as write_tiny_blip
from fake_models import tiny_llava as write_tiny_llava
from typer.testing import CliRunner

from datagen.build import build
from datagen.captioning import (
    INSTRUCTIONS,
    RETRY_INSTRUCTIONS,
    RETRY_PREFIX,
    HfCaptioner,
    SidecarCaptioner,
    degenerate,
    load_captioner,
)
from datagen.pipeline import LocalRunner
from filters.apply import read_policy
from filters.report import write_report
from layerflow_model.config import preset
from layerflow_model.data import Row, check_captions
from manifests import io
from manifests.errors import DatasetError
from manifests.layers import CAPTIONED_LAYERS, Layer, SampleKind
from manifests.schema import CAPTION_LAYERS, CAPTION_MISSING, FLAGS, KEEP, REJECT_REASONS, caption_column
from manifests.validate import validate

FLAG = "caption_layers<3"
TINY_MODEL = {"depth": 2, "heads": 2, "head_dim": 8, "height": 16, "width": 16, "frames": 2, "text_tokens": 8,
              "tiny_t5_d_model": 16, "tiny_t5_layers": 1, "motion_rank": 2, "content_rank": 4, "patch_size": 4,
              "time_embed_dim": 16}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
    monkeypatch.setenv("LAYERFLOW_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("blip")
    write_tiny_blip(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("llava")
    write_tiny_llava(folder)
    return folder


def sample_layers(seed: int, frames: int = 3, height: int = 24, width: int = 32) -> dict[Layer, np.ndarray]:
    rng = np.random.default_rng(seed)
    rgb = {layer: rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8) for layer in CAPTIONED_LAYERS}
    return {**rgb, Layer.ALPHA: rng.integers(0, 256, (frames, height, width), dtype=np.uint8)}


class Script:
    """Stands in for `HfCaptioner.generate`: answers each call with the next scripted batch, records the prompts."""

    def __init__(self, *batches: list[str | None]) -> None:
        self.batches = list(batches)
        self.calls: list[list[str | None]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> Script:
        def generate(captioner, images, prompts):
            assert len(images) == len(prompts)
            self.calls.append(list(prompts))
            assert self.batches, f"an unscripted generate call for {len(images)} images"
            return self.batches.pop(0)

        monkeypatch.setattr(HfCaptioner, "generate", generate)
        return self


# degenerate() -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "why"), [
    (None, "empty"), ("", "empty"), ("  \n", "empty"), ("a", "fewer than 2 letters"), (".", "fewer than 2 letters"),
    ("the", "only stop words"), ("an image", "only stop words"), ("a a a a", "only stop words"),
    ("the the the", "only stop words"), ("dog dog dog dog", "one word repeated"),
    ("dog cat dog bird dog", "one word repeated"), ("cat cat cat", "a phrase repeated"),
    ("on the table on the table on the table", "a phrase repeated"),
    ("a red car parked on a street parked on a street parked on a street", "a phrase repeated"),
])
def test_degenerate_generations_are_named(text, why):
    assert degenerate(text) == why


@pytest.mark.parametrize("text", ["a red car", "two dogs on grass", "sky", "a cat", "door door cloud river",
                                  "a man in a red shirt and a hat", "A brick wall.", "an old man reading a book",
                                  "the the cat"])
def test_real_short_captions_pass(text):
    assert degenerate(text) is None


# Retry and cache, with scripted generations ---------------------------------------------------------------------

def test_a_degenerate_caption_is_retried_once_with_a_caption_start_and_the_good_one_kept(tiny_blip, monkeypatch):
    script = Script(["a a a a", "a brick wall", "the"], ["red car", "a cat on a wall"]).install(monkeypatch)
    captions = load_captioner(f"hf:{tiny_blip}")({}, sample_layers(0))
    assert captions == {Layer.FOREGROUND: "red car", Layer.BACKGROUND: "a brick wall",
                        Layer.BLENDED: "a cat on a wall"}
    assert captions.missing == {}
    assert script.calls == [[None, None, None], [RETRY_PREFIX, RETRY_PREFIX]]  # misses in one call, retries in one


def test_a_chat_vlm_is_retried_with_a_differently_worded_instruction(tiny_llava, monkeypatch):
    script = Script(["assistant assistant assistant assistant", "a lawn", "a cat on a lawn"], ["a cat"])
    script.install(monkeypatch)
    captioner = load_captioner(f"hf:{tiny_llava}")
    captions = captioner({}, sample_layers(1))
    assert captions[Layer.FOREGROUND] == "a cat" and captions.missing == {}
    first, [retry] = script.calls
    assert first == [captioner.prompts[layer] for layer in CAPTIONED_LAYERS]
    assert RETRY_INSTRUCTIONS[Layer.FOREGROUND] in retry and INSTRUCTIONS[Layer.FOREGROUND] not in retry
    assert retry.startswith("user: <image> ") and retry.endswith("assistant:")  # the model's chat template


def test_degenerate_twice_is_null_with_the_reason_and_never_tried_a_third_time(tiny_blip, monkeypatch):
    script = Script(["a a a a", "grass", "the the the"], ["", "image"]).install(monkeypatch)
    captions = load_captioner(f"hf:{tiny_blip}")({}, sample_layers(2))
    assert captions == {Layer.FOREGROUND: None, Layer.BACKGROUND: "grass", Layer.BLENDED: None}
    assert captions.missing == {
        Layer.FOREGROUND: "degenerate ('a a a a': only stop words; retry '': empty)",
        Layer.BLENDED: "degenerate ('the the the': only stop words; retry 'image': only stop words)",
    }
    assert len(script.calls) == 2


def test_a_cache_hit_gives_the_same_caption_and_reason_without_the_model(tiny_blip, monkeypatch):
    Script(["a a a a", "grass", "a cat"], [""]).install(monkeypatch)
    layers = sample_layers(3)
    first = load_captioner(f"hf:{tiny_blip}")({}, layers)
    untouched = Script().install(monkeypatch)  # any call fails
    again = load_captioner(f"hf:{tiny_blip}")  # a retried build: a new worker, the same cache folder
    captions = again({}, layers)
    assert captions == first and captions.missing == first.missing
    assert captions.missing[Layer.FOREGROUND].startswith("degenerate ('a a a a'")
    assert untouched.calls == [] and "network" not in again.__dict__


def test_blip_gets_the_caption_start_as_text_and_it_is_cut_from_the_caption(tiny_blip, monkeypatch):
    from transformers import BlipForConditionalGeneration

    captioner = load_captioner(f"hf:{tiny_blip}")
    given: list[dict] = []
    original = BlipForConditionalGeneration.generate

    def recording(self, *args, **kwargs):
        given.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BlipForConditionalGeneration, "generate", recording)
    monkeypatch.setattr(captioner.processor, "batch_decode",
                        lambda tokens, **kwargs: [f"{RETRY_PREFIX} a red car", "two dogs on grass"][: len(tokens)])
    image = sample_layers(4)[Layer.BLENDED][0]
    assert captioner.generate([image, image], [RETRY_PREFIX, RETRY_PREFIX]) == ["a red car", "two dogs on grass"]
    assert captioner.generate([image], [None]) == ["a photograph of a red car"]  # unconditional: nothing to cut
    assert "input_ids" in given[0] and len(given[0]["input_ids"]) == 2
    assert "input_ids" not in given[1]


# The manifest, the policy and the report --------------------------------------------------------------------------

def test_sidecar_and_off_captioners_say_why_a_caption_is_missing():
    from test_stages import input_row, sample

    missing = SidecarCaptioner()(sample(SampleKind.VIDEO_COPY_PASTE, input_row("a", caption="a red ball"),
                                        input_row("b")))
    assert missing.missing == {Layer.BACKGROUND: "no sidecar caption", Layer.BLENDED: "no sidecar caption"}
    off = load_captioner("none")(sample(SampleKind.VIDEO_COPY_PASTE, input_row("a"), input_row("b")))
    assert set(off.missing.values()) == {"captioning is off (--captioner none)"} and len(off.missing) == 3


def test_a_sidecar_build_counts_captioned_layers_flags_incomplete_samples_and_reports_them(tiny_source, small_config,
                                                                                           tmp_path):
    summary = build(str(tiny_source), tmp_path / "ds", replace(small_config, captioner="sidecar", clip="none"),
                    LocalRunner(progress=False))
    rows = io.read_manifest(tmp_path / "ds").to_pylist()
    for row in rows:
        captioned = [layer for layer in CAPTIONED_LAYERS if row[caption_column(layer)]]
        assert row[CAPTION_LAYERS] == len(captioned)
        if len(captioned) == 3:
            assert row[CAPTION_MISSING] is None and FLAG not in row[FLAGS]
        else:
            assert row[CAPTION_MISSING] == "; ".join(f"{layer.value}: no sidecar caption"
                                                     for layer in CAPTIONED_LAYERS if layer not in captioned)
            assert FLAG in row[FLAGS]
        assert FLAG not in row[REJECT_REASONS]  # a flag, never a rejection
    incomplete = sum(row[CAPTION_LAYERS] < 3 for row in rows)
    assert 0 < incomplete < len(rows)  # the sticker inputs have no sidecar; the layered image has all three
    [step] = [step for step in summary["policy"]["funnel"]["steps"] if step["rule"] == FLAG]
    assert step["flagged"] == incomplete and step["alone"] == 0
    assert summary["flags"][FLAG] == incomplete

    assert validate(tmp_path / "ds").problems == []  # the new columns follow the contract
    page = write_report(tmp_path / "ds", tmp_path / "report.html").read_text()
    assert f"<code>{FLAG.replace('<', '&lt;')}</code>" in page and "captions are missing" in page
    [rule] = read_policy(tmp_path / "ds").rule(CAPTION_LAYERS)
    assert rule.allow == set(SampleKind)  # flags every kind (a new kind must be added to the default policy)


def test_a_model_build_records_degenerate_captions_as_null_with_the_reason(tiny_source, small_config, tiny_blip,
                                                                          tmp_path, monkeypatch):
    def looping(captioner, images, prompts):
        return ["a a a a"] * len(images)

    monkeypatch.setattr(HfCaptioner, "generate", looping)
    build(str(tiny_source), tmp_path / "ds", replace(small_config, captioner=f"hf:{tiny_blip}", clip="none"),
          LocalRunner(progress=False))
    rows = io.read_manifest(tmp_path / "ds").to_pylist()
    assert rows and all(row[CAPTION_LAYERS] == 0 for row in rows)
    reason = "degenerate ('a a a a': only stop words; retry 'a a a a': only stop words)"
    assert {row[CAPTION_MISSING] for row in rows} == {"; ".join(f"{layer.value}: {reason}"
                                                               for layer in CAPTIONED_LAYERS)}
    assert all(FLAG in row[FLAGS] and FLAG not in row[REJECT_REASONS] for row in rows)


# Training ---------------------------------------------------------------------------------------------------------

def test_check_captions_counts_the_kept_samples_without_any_caption():
    def row(name: str, *captions: str) -> Row:
        return Row(name, SampleKind.VIDEO_COPY_PASTE, 4, {}, dict(zip(CAPTIONED_LAYERS, captions)))

    rows = [row("a", "a cat", "", ""), row("b", "", " ", ""), row("c", "a dog", "grass", "a dog on grass")]
    assert check_captions(rows) == "1 of 3 kept samples have no caption (they train on empty prompts)"
    with pytest.raises(DatasetError):
        check_captions(rows[1:2])
    assert check_captions(rows[1:2], allow_empty=True).startswith("1 of 1 kept samples have no caption")
    assert check_captions([]).startswith("0 of 0")  # no samples at all is the batch plan's error, not this one


@pytest.fixture
def uncaptioned(tiny_source: Path, small_config, tmp_path: Path) -> Path:
    """The tiny source built with captioning off: no kept sample has a caption."""
    build(str(tiny_source), tmp_path / "ds", replace(small_config, captioner="none", clip="none"),
          LocalRunner(progress=False))
    rows = [row for row in io.read_manifest(tmp_path / "ds").to_pylist() if row[KEEP]]
    assert rows and all(row[CAPTION_LAYERS] == 0 for row in rows)
    return tmp_path / "ds"


def test_train_refuses_a_dataset_without_captions_unless_allowed(uncaptioned, tmp_path, monkeypatch):
    import layerflow_model.config as config_module
    from cli import app

    monkeypatch.setitem(config_module.PRESETS, "toy", preset("toy", **TINY_MODEL))
    args = ["train", "--manifest", str(uncaptioned), "--steps", "1", "--batch-size", "1", "--device", "cpu"]
    refused = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "refused")])
    assert isinstance(refused.exception, DatasetError)
    message = str(refused.exception)
    assert "\n" not in message and "--allow-empty-captions" in message and "none of the" in message
    assert not (tmp_path / "refused").exists()  # refused before any model was built or checkpoint written

    allowed = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "allowed"), "--allow-empty-captions"])
    assert allowed.exit_code == 0, allowed.output
    kept = sum(row[KEEP] for row in io.read_manifest(uncaptioned).to_pylist() if row["split"] == "train")
    assert f"{kept} of {kept} kept samples have no caption" in allowed.output
    assert (tmp_path / "allowed" / "checkpoint-0000001").is_dir()
