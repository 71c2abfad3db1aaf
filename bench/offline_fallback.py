"""What a build of real sources costs on a machine without network: the one reachability probe, then the fallback.

Writes a demo-source folder (`layerflow-data demo-source DIR`), then runs `layerflow-data build --source DIR` twice
with empty model caches, as a user would: with `HF_HUB_OFFLINE=1` (the baseline: no probe at all) and without it
(`auto` probes the hub once, at most 3 s, then falls back to the weight-free path). Prints one JSON line with both
wall times and `extra_s` = without - baseline (the issue's bound: 10 s), and `ratio` = without / baseline. The two
builds differ only in how the driver chooses the models, so that phase (`choose_models`) is also timed alone (best of
three, in a fresh process each): `choose_extra_s` is the same difference without the build's noise.

    python bench/offline_fallback.py [--endpoint URL]

`--endpoint` sets HF_ENDPOINT for the run without HF_HUB_OFFLINE (default: the real hub, which a machine without
network cannot reach; point it at a server that never answers to measure the worst case).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-m", "cli"]
REPO = Path(__file__).resolve().parents[1]


def timed_build(source: Path, out: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([*CLI, "build", "--source", str(source), "--out", str(out), "--no-ray"], env=env, cwd=REPO,
                   check=True, capture_output=True)
    return time.perf_counter() - start


CHOOSE = ("import time; from datagen.config import BuildConfig; from datagen.preflight import choose_models; "
          "start = time.perf_counter(); choose_models(BuildConfig(device='cpu'), learned_defaults=True); "
          "print(time.perf_counter() - start)")


def timed_choice(env: dict[str, str]) -> float:
    """Seconds the driver takes to choose the models of a real-source build (best of three fresh processes)."""
    runs = [subprocess.run([sys.executable, "-c", CHOOSE], env=env, cwd=REPO, check=True, capture_output=True,
                           text=True).stdout for _ in range(3)]
    return min(float(run.strip().splitlines()[-1]) for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        subprocess.run([*CLI, "demo-source", str(root / "src")], cwd=REPO, check=True, capture_output=True)
        seconds, choice = {}, {}
        for name, offline in (("hf_hub_offline", True), ("no_network", False)):
            env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
            env.update(HF_HOME=str(root / name / "hf"), LAYERFLOW_CACHE_DIR=str(root / name / "cache"),
                       U2NET_HOME=str(root / name / "u2net"))
            if offline:
                env["HF_HUB_OFFLINE"] = "1"
            elif args.endpoint:
                env["HF_ENDPOINT"] = args.endpoint
            seconds[name] = timed_build(root / "src", root / name / "ds", env)
            choice[name] = timed_choice(env)
    base, without = seconds["hf_hub_offline"], seconds["no_network"]
    print(json.dumps({"baseline": "HF_HUB_OFFLINE=1", "hf_hub_offline_s": round(base, 2),
                      "no_network_s": round(without, 2), "extra_s": round(without - base, 2),
                      "ratio": round(without / base, 3), "choose_hf_hub_offline_s": round(choice["hf_hub_offline"], 3),
                      "choose_no_network_s": round(choice["no_network"], 3),
                      "choose_extra_s": round(choice["no_network"] - choice["hf_hub_offline"], 3),
                      "endpoint": args.endpoint or "https://huggingface.co"}))


if __name__ == "__main__":
    main()
