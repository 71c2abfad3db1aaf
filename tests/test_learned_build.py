"""Issue 5's end-to-end check: one `build` with learned backends only (`rembg+sam2` matting, an `hf:` captioner), on
CPU, tiny random models loaded through the real code, and the backends it used written into the summary."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from test_captioning_hf import WORDS, offline, tiny_blip  # noqa: F401  (fixtures: the tiny BLIP, no hub access)
from test_matting_rembg import export, no_downloads  # noqa: F401  (fixture: rembg cannot download)
from test_matting_sam2 import SmallSam2

from datagen import matting
from datagen.build import build
from datagen.pipeline import LocalRunner
from manifests import io
from manifests.layers import CAPTIONED_LAYERS, SampleKind


@pytest.mark.slow
def test_build_with_rembg_plus_sam2_and_an_hf_captioner(tiny_source, small_config, tiny_blip, tmp_path,  # noqa: F811
                                                        monkeypatch):
    monkeypatch.setitem(matting.BACKENDS, "sam2", SmallSam2)  # SAM 2 at 128 px: the same code, CPU-sized
    onnx = export(tmp_path / "tiny_rembg.onnx")
    config = replace(small_config, matting=f"rembg:{onnx}+sam2:sam2.1_hiera_t:random", captioner=f"hf:{tiny_blip}",
                     clip="none", device="cpu")
    summary = build(str(tiny_source), tmp_path / "ds", config, LocalRunner(progress=False))

    rows = io.read_manifest(tmp_path / "ds").to_pylist()
    videos = [row for row in rows if row["kind"] == SampleKind.VIDEO_COPY_PASTE.value]
    assert videos and {row["matting_backend"] for row in videos} == {"rembg+sam2"}
    assert {row["matting_model"] for row in videos} == {"tiny_rembg.onnx+sam2.1_hiera_t"}
    sha = hashlib.sha256(onnx.read_bytes()).hexdigest()
    assert {row["matting_weights_sha256"] for row in videos} == {f"{sha}+none"}  # SAM 2 without a checkpoint
    assert {row["random_weights"] for row in videos} == {True} and summary["random_weights"]  # and it says so
    captions = [row[f"caption_{layer.value}"] for row in rows for layer in CAPTIONED_LAYERS]
    assert any(captions) and all(c is None or set(c.split()) <= set(WORDS) for c in captions)  # the model's words

    backends = summary["backends"]
    assert backends["matting"]["requested"] == config.matting
    assert backends["matting"]["used"]["rembg+sam2"] == len(videos)
    assert {"backend": "rembg+sam2", "model_id": "tiny_rembg.onnx+sam2.1_hiera_t",
            "weights_sha256": f"{sha}+none"} in backends["matting"]["models"]
    assert backends["captioner_used"] == {f"hf:{tiny_blip.resolve()}": len(rows)}
    assert summary["config"]["device"] == "cpu"
