"""`layerflow-data filter` on a synthetic 1,000-row manifest: wall time, and whether any model library loaded.

Prints one JSON line. Baseline: the issue's budget of 5 s for 1,000 rows (`ratio` = budget / measured, so > 1
is faster than required). The command runs in a fresh interpreter, as a user would run it, and reports the
heavy modules it imported (torch, open_clip): there must be none.

    python bench/filter_speed.py [--rows 1000] [--parts 8] [--embedding-dim 512]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from manifests import io  # noqa: E402
from manifests.layers import CAPTIONED_LAYERS, Layer, SampleKind  # noqa: E402
from manifests.schema import SAMPLE_SCHEMA, SCORES, caption_column, media_uri, uri_column  # noqa: E402

BUDGET_S = 5.0
PROBE = """
import sys, time
start = time.perf_counter()
sys.argv = ["layerflow-data", "filter", sys.argv[1]]
import cli
try:
    cli.main()
except SystemExit as exc:
    assert not exc.code, exc.code
print("__result__", time.perf_counter() - start, ",".join(m for m in ("torch", "open_clip") if m in sys.modules))
"""


def synthetic_dataset(root: Path, rows: int, parts: int, dim: int, seed: int = 0) -> None:
    """A dataset folder whose manifest has `rows` samples with random scores and unit-norm embeddings."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(rows):
        sample_id = f"{i:016x}"
        embedding = rng.normal(size=dim).astype(np.float32)
        row = {name: None for name in SAMPLE_SCHEMA.names}
        row.update({name: float(rng.uniform(0.0, 1.0)) for name in SCORES})
        row.update({uri_column(layer): media_uri(sample_id, layer) for layer in Layer})
        row.update({caption_column(layer): "a caption" for layer in CAPTIONED_LAYERS})
        row.update(
            sample_id=sample_id, kind=(SampleKind.VIDEO_COPY_PASTE if i % 3 else SampleKind.IMAGE_FROZEN).value,
            split="train", num_frames=16, fps=8.0, height=256, width=256, input_id_foreground="f",
            input_id_background="b",
            source_foreground="fg.mp4", source_background="bg.mp4", frames_foreground=list(range(16)),
            frames_background=list(range(16)), placement="{}", matting_backend="given", captioner="sidecar", seed=0,
            caption_layers=len(CAPTIONED_LAYERS), random_weights=False, adapter="copy_paste",
            layers_uri_foreground=[media_uri(sample_id, Layer.FOREGROUND)],
            layers_uri_alpha=[media_uri(sample_id, Layer.ALPHA)], layers_caption=["a caption"],
            layers_source=["fg.mp4"], source_companions=[],
            config_fingerprint="x", recompose_psnr=float(rng.uniform(20, 60)),
            clip_embedding=(embedding / np.linalg.norm(embedding)).tolist(), clip_model="synthetic",
            keep=True, reject_reasons=[], flags=[], duplicate_of=None,
        )
        samples.append(row)
    for chunk in np.array_split(np.arange(rows), parts):
        io.write_manifest_part(root, [samples[i] for i in chunk])
    io.write_json_atomic({"samples": {"total": rows, "kept": rows, "rejected": 0}, "inputs": {}, "unscored": {}},
                         root / io.SUMMARY_FILE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--parts", type=int, default=8)
    parser.add_argument("--embedding-dim", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        synthetic_dataset(root, args.rows, args.parts, args.embedding_dim)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", PROBE, str(root)], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1])
        wall = time.perf_counter() - start
        if done.returncode:
            sys.exit(f"filter failed:\n{done.stderr}")
        line = next(line for line in done.stdout.splitlines() if line.startswith("__result__"))
        _, inside, heavy = (line.split(" ") + [""])[:3]
        kept = io.read_manifest(root).column("keep").to_pylist()
    print(json.dumps({
        "bench": "filter_speed", "rows": args.rows, "parts": args.parts, "embedding_dim": args.embedding_dim,
        "seconds_wall": round(wall, 3), "seconds_in_command": round(float(inside), 3),
        "baseline": f"issue budget {BUDGET_S} s per 1,000 rows", "ratio": round(BUDGET_S / wall, 2),
        "kept": sum(kept), "model_modules_imported": [m for m in heavy.split(",") if m],
    }))


if __name__ == "__main__":
    main()
