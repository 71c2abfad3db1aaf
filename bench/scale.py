"""Memory at scale: peak RSS and samples/minute of the real `build` CLI over 100 and 1,000 small sources.

Prints one JSON line. Each run writes N small synthetic videos (a textured disk moving over a textured
background, 12 frames of 64x96 at 24 fps, seeded per source, each with a caption sidecar), then runs
`layerflow-data build` in a subprocess exactly as a user would, while a sampler polls, every
`--interval` seconds, the RSS of the driver (the CLI process) and of every process below it (Ray's
GCS, raylet and workers): peak driver RSS, peak RSS of one Ray worker, peak RSS of the whole tree.
Object-store spilling is read from the Ray session of the build (found from its raylet's command
line): the peak size of its spill folder and the raylet's own "Spilled N MiB" log total. The driver's
peak is also given up to the moment `_summary.json` says complete (`build()` returned), which leaves out
Ray's shutdown, the printed summary and the interpreter's exit. The
baseline is the smallest run; `ratio_<largest>_vs_<smallest>` compares the largest run with it
(a ratio near 1 for memory means no growth with the number of sources).

    python bench/scale.py                    # 100 and 1,000 sources, local embedded Ray (~2.5 min on 2 cores)
    python bench/scale.py --sizes 20,100     # a quick run
    python bench/scale.py --no-ray           # the plain runner (one process)
    python bench/scale.py --timeout 1500     # stop a run after 1,500 s (reported as timed out, peaks so far)

Completeness is checked per run: every discovered input ends in exactly one state
(`_summary.json` inputs.accounted == inputs.discovered == N).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from manifests.video_io import write_rgb_video  # noqa: E402

MIB = 1024 * 1024
FRAMES, HEIGHT, WIDTH, FPS = 12, 64, 96, 24.0
# Options that keep 1,000 sources feasible on 2 cores: tiny clips, one sample per foreground, no CLIP model,
# weight-free matting (so `auto` never picks a learned model that happens to be cached on this machine).
BUILD_OPTIONS = ["--frames", "4", "--size", "32x48", "--clip", "none", "--backgrounds-per-foreground", "1",
                 "--matting", "bgsub"]
SESSION_ARG = re.compile(r"--session[-_]dir=(\S+)")
SPILLED_LOG = re.compile(r"Spilled (\d+) MiB")


# ---------------------------------------------------------------- sources


def _texture(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    coarse = rng.integers(0, 255, (height // cell + 2, width // cell + 2, 3), dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)


def synthetic_clip(seed: int) -> np.ndarray:
    """(FRAMES, HEIGHT, WIDTH, 3) uint8: a textured disk crossing a textured background; everything seeded."""
    rng = np.random.default_rng([2024, seed])
    background = _texture(rng, HEIGHT, WIDTH, int(rng.integers(4, 12)))
    disk = _texture(rng, HEIGHT, WIDTH, int(rng.integers(3, 8)))
    radius = float(rng.uniform(HEIGHT / 7, HEIGHT / 4))
    cy = float(rng.uniform(radius + 1, HEIGHT - radius - 1))
    x0, x1 = radius + 1, WIDTH - radius - 1
    if rng.random() < 0.5:
        x0, x1 = x1, x0
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    frames = []
    for t in range(FRAMES):
        cx = x0 + (x1 - x0) * t / (FRAMES - 1)
        alpha = np.clip(radius - np.hypot(xx - cx, yy - cy) + 0.5, 0.0, 1.0)[..., None]
        frames.append(np.rint(alpha * disk + (1 - alpha) * background).astype(np.uint8))
    return np.stack(frames)


def write_sources(folder: Path, count: int, reuse: Path | None = None) -> None:
    """`count` videos `clip_00000.mp4`, ... with a `.txt` caption sidecar each; hard-links what `reuse` holds."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        for suffix in (".mp4", ".txt"):
            name = f"clip_{index:05d}{suffix}"
            if reuse is not None and (reuse / name).exists():
                try:
                    os.link(reuse / name, folder / name)
                    continue
                except OSError:
                    pass
            if suffix == ".mp4":
                write_rgb_video(folder / name, synthetic_clip(index), FPS)
            else:
                (folder / name).write_text(f"a textured ball number {index}", encoding="utf-8")


# ---------------------------------------------------------------- memory sampling


def _is_worker(cmdline: list[str], name: str) -> bool:
    first = cmdline[0] if cmdline else ""
    return name.startswith("ray::") or first.startswith("ray::") or any("default_worker.py" in c for c in cmdline)


class Sampler(threading.Thread):
    """Polls the RSS of a process and of all its descendants until `stop()`."""

    def __init__(self, pid: int, interval: float, summary: Path | None = None) -> None:
        """`summary`: the build's `_summary.json`; the driver's peak is also kept up to when it says complete."""
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.summary = summary
        self._summary_mtime = None
        self.built_at: float | None = None  # seconds when `_summary.json` said complete (build() returned)
        self.peak_driver_built = 0  # the driver's peak up to then: without Ray's shutdown and interpreter exit
        self.interval = interval
        self._halt = threading.Event()
        self.start_time = time.perf_counter()
        self.samples = 0
        self.peak_driver = 0
        self.peak_worker = 0
        self.peak_worker_cmd = None
        self.peak_services = 0  # Ray's own processes (GCS, raylet, ...), together
        self.peak_tree = 0
        self.peak_processes = 0
        self.peak_workers = 0
        self.peak_spill_bytes = 0
        self.session_dir: str | None = None
        self.timeline: list[tuple[float, int]] = []  # (seconds, driver RSS)
        self.seen: dict[int, float] = {}  # pid -> create time of every descendant seen
        self._last_spill_check = 0.0

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while not self._halt.is_set():
            self.poll()
            self._halt.wait(self.interval)

    def poll(self) -> None:
        try:
            driver = self.root.memory_info().rss
            children = self.root.children(recursive=True)
        except psutil.Error:
            return
        if driver == 0:  # exited, not yet reaped (a zombie)
            return
        tree, services, workers = driver, 0, 0
        for child in children:
            try:
                with child.oneshot():
                    rss = child.memory_info().rss
                    name = child.name()
                    cmdline = child.cmdline()
                    self.seen.setdefault(child.pid, child.create_time())
            except psutil.Error:
                continue
            tree += rss
            if self.session_dir is None:
                match = next((m for m in map(SESSION_ARG.search, cmdline) if m), None)
                if match:
                    self.session_dir = match.group(1)
            if _is_worker(cmdline, name):
                workers += 1
                if rss > self.peak_worker:
                    self.peak_worker, self.peak_worker_cmd = rss, (cmdline[0] if cmdline else name)[:80]
            else:
                services += rss
        now = time.perf_counter() - self.start_time
        self.samples += 1
        self.timeline.append((now, driver))
        self.peak_driver = max(self.peak_driver, driver)
        if self.built_at is None:
            self.peak_driver_built = max(self.peak_driver_built, driver)
            if self._complete():
                self.built_at = now
        self.peak_tree = max(self.peak_tree, tree)
        self.peak_services = max(self.peak_services, services)
        self.peak_processes = max(self.peak_processes, 1 + len(children))
        self.peak_workers = max(self.peak_workers, workers)
        if self.session_dir and now - self._last_spill_check >= 1.0:
            self._last_spill_check = now
            self.peak_spill_bytes = max(self.peak_spill_bytes, spill_bytes(self.session_dir))

    def _complete(self) -> bool:
        if self.summary is None:
            return False
        try:
            mtime = self.summary.stat().st_mtime
            if mtime == self._summary_mtime:
                return False
            self._summary_mtime = mtime
            return bool(json.loads(self.summary.read_text()).get("complete"))
        except (OSError, ValueError):
            return False

    def driver_timeline(self, points: int = 11) -> list[float]:
        """Driver RSS (MiB) at 0%, 10%, ..., 100% of the run: growth within a run shows here."""
        if not self.timeline:
            return []
        total = self.timeline[-1][0]
        out, index = [], 0
        for k in range(points):
            target = total * k / (points - 1)
            while index < len(self.timeline) - 1 and self.timeline[index][0] < target:
                index += 1
            out.append(round(self.timeline[index][1] / MIB, 1))
        return out

    def survivors(self) -> list[psutil.Process]:
        """Descendants seen during the run that still run (same pid and start time) after the driver exited."""
        alive = []
        for pid, created in self.seen.items():
            try:
                process = psutil.Process(pid)
                if process.create_time() == created:
                    alive.append(process)
            except psutil.Error:
                continue
        return alive


def spill_bytes(session_dir: str) -> int:
    """Bytes now in the session's object-spilling folders (`<session>/ray_spilled_objects*`)."""
    total = 0
    for folder in Path(session_dir).glob("ray_spilled_objects*"):
        for root, _, files in os.walk(folder):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.stat(os.path.join(root, name)).st_size
    return total


def raylet_spilled_mib(session_dir: str | None) -> int | None:
    """The raylet's cumulative "Spilled N MiB" log total (it logs only when it spills); None without the log."""
    if not session_dir:
        return None
    folder = Path(session_dir) / "logs"
    logs = [*folder.glob("raylet*.out"), *folder.glob("raylet*.err")]
    if not logs:
        return None
    spilled = 0
    for log in logs:
        try:
            text = log.read_text(errors="replace")
        except OSError:
            continue
        spilled = max([spilled, *(int(m) for m in SPILLED_LOG.findall(text))])
    return spilled


# ---------------------------------------------------------------- one run


def cli() -> str:
    local = Path(sys.executable).parent / "layerflow-data"
    return str(local) if local.exists() else (shutil.which("layerflow-data") or "layerflow-data")


def measure(sources: int, src: Path, out: Path, no_ray: bool, interval: float, timeout: float | None,
            log_path: Path) -> dict:
    command = [cli(), "build", "--source", str(src), "--out", str(out), *BUILD_OPTIONS]
    if no_ray:
        command.append("--no-ray")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the local embedded Ray, never a cluster
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        sampler = Sampler(process.pid, interval, out / "_summary.json")
        sampler.start()
        timed_out = False
        next_report = 30.0
        while process.poll() is None:
            elapsed = time.perf_counter() - start
            if timeout is not None and elapsed > timeout:
                timed_out = True
                _stop_tree(process, sampler)
                break
            if elapsed >= next_report:
                next_report += 30.0
                done = len(list((out / "media").glob("*"))) if (out / "media").is_dir() else 0
                print(f"[scale] {sources} sources: {elapsed:.0f} s, {done} samples written, driver "
                      f"{sampler.peak_driver / MIB:.0f} MiB peak, worker {sampler.peak_worker / MIB:.0f} MiB peak",
                      file=sys.stderr, flush=True)
            time.sleep(0.5)
        seconds = time.perf_counter() - start
        sampler.stop()
        sampler.join()
    time.sleep(2.0)  # Ray's processes get a moment to go after `ray.shutdown()`
    left = sampler.survivors()
    for survivor in left:  # processes this run started and did not end: stop them (by pid), and report them
        with contextlib.suppress(psutil.Error):
            survivor.terminate()
    psutil.wait_procs(left, timeout=5)

    summary_path = out / "_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    entry: dict = {"sources": sources, "exit_code": process.returncode, "timed_out": timed_out}
    if summary is None:
        tail = log_path.read_text(errors="replace")[-2000:]
        entry.update(error="no _summary.json", log_tail=tail)
        samples = len(list((out / "media").glob("*"))) if (out / "media").is_dir() else 0
        entry["samples_written_so_far"] = samples
    else:
        samples = summary["samples"]["total"]
    inputs = (summary or {}).get("inputs", {})
    session = sampler.session_dir
    raylet_mib = raylet_spilled_mib(session)
    entry.update({
        "samples": samples,
        "seconds": round(seconds, 2),
        "samples_per_minute": round(60 * samples / seconds, 2) if seconds > 0 else None,
        "build_wall_seconds": (summary or {}).get("seconds", {}).get("wall"),
        "peak_driver_rss_mib": round(sampler.peak_driver / MIB, 1),
        "peak_driver_rss_until_built_mib": round(sampler.peak_driver_built / MIB, 1),
        "built_at_seconds": None if sampler.built_at is None else round(sampler.built_at, 2),
        "peak_worker_rss_mib": round(sampler.peak_worker / MIB, 1),
        "peak_worker_process": sampler.peak_worker_cmd,
        "peak_ray_services_rss_mib": round(sampler.peak_services / MIB, 1),
        "peak_tree_rss_mib": round(sampler.peak_tree / MIB, 1),
        "peak_processes": sampler.peak_processes,
        "peak_workers": sampler.peak_workers,
        "spilled_mib": None if no_ray else round(max(sampler.peak_spill_bytes / MIB, raylet_mib or 0), 1),
        "spill_folder_peak_mib": None if no_ray else round(sampler.peak_spill_bytes / MIB, 1),
        "raylet_spilled_mib": raylet_mib,
        "ray_session": session,
        "driver_rss_timeline_mib": sampler.driver_timeline(),
        "memory_samples": sampler.samples,
        "inputs": {k: inputs.get(k) for k in ("discovered", "accounted", "used", "unused", "rejected", "failed")},
        "complete": bool(summary) and inputs.get("accounted") == inputs.get("discovered") == sources,
        "failures": (summary or {}).get("failures", {}).get("total"),
        "leftover_processes": [p.pid for p in left],
        "command": shlex.join(command),
    })
    return entry


def _stop_tree(process: subprocess.Popen, sampler: Sampler) -> None:
    """Stop the build this bench started and every process below it (each by its pid)."""
    try:
        family = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        family = []
    process.terminate()
    for member in family:
        with contextlib.suppress(psutil.Error):
            member.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    psutil.wait_procs(family, timeout=10)


# ---------------------------------------------------------------- main


def _ratio(large: dict, small: dict, key: str) -> float | None:
    a, b = large.get(key), small.get(key)
    return round(a / b, 3) if a and b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000", help="Comma-separated source counts (default 100,1000).")
    parser.add_argument("--no-ray", action="store_true", help="Measure the plain runner (`build --no-ray`).")
    parser.add_argument("--interval", type=float, default=0.2, help="Memory sampling period, seconds.")
    parser.add_argument("--timeout", type=float, default=None, help="Stop a run after this many seconds.")
    parser.add_argument("--workdir", default=None, help="Keep sources and datasets here (default: a temp dir).")
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})

    tmp = None
    if args.workdir:
        root = Path(args.workdir)
        root.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="layerflow_scale_")
        root = Path(tmp.name)
    try:
        started = time.perf_counter()
        biggest = root / f"src_{sizes[-1]}"
        write_sources(biggest, sizes[-1])
        generate_seconds = time.perf_counter() - started
        runs = []
        for size in sizes:
            src = biggest if size == sizes[-1] else root / f"src_{size}"
            if src != biggest:
                write_sources(src, size, reuse=biggest)
            out = root / f"ds_{size}{'_noray' if args.no_ray else ''}"
            if out.exists():
                shutil.rmtree(out)
            print(f"[scale] building {size} sources ...", file=sys.stderr, flush=True)
            runs.append(measure(size, src, out, args.no_ray, args.interval, args.timeout,
                                root / f"build_{size}.log"))
            print(f"[scale] {size} sources: {json.dumps(runs[-1])}", file=sys.stderr, flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()

    small, large = runs[0], runs[-1]
    result = {
        "bench": "scale",
        "runner": "local" if args.no_ray else "ray",
        "cpus": os.cpu_count(),
        "options": {"build": " ".join(BUILD_OPTIONS), "source": f"{FRAMES} frames {HEIGHT}x{WIDTH} at {FPS:g} fps "
                    "H.264, a seeded textured disk over a seeded texture, one .txt caption sidecar each",
                    "sample_interval_s": args.interval, "timeout_s": args.timeout,
                    "rss": "resident set size; the tree total counts shared pages (the object store) once per process",
                    "driver_until_built": "the driver's peak until _summary.json says complete (build() returned): "
                    "without ray.shutdown(), the printed summary and the interpreter's exit",
                    "spill": "max of the peak size of <session>/ray_spilled_objects* and the raylet's 'Spilled N MiB'"},
        "generate_sources_seconds": round(generate_seconds, 2),
        "runs": runs,
        "baseline": f"the {small['sources']}-source run",
        f"ratio_{large['sources']}_vs_{small['sources']}": {
            "sources": round(large["sources"] / small["sources"], 3),
            "peak_driver_rss": _ratio(large, small, "peak_driver_rss_mib"),
            "peak_driver_rss_until_built": _ratio(large, small, "peak_driver_rss_until_built_mib"),
            "peak_worker_rss": _ratio(large, small, "peak_worker_rss_mib"),
            "peak_tree_rss": _ratio(large, small, "peak_tree_rss_mib"),
            "samples_per_minute": _ratio(large, small, "samples_per_minute"),
        },
        "command": large["command"],
        "bench_command": shlex.join([Path(sys.executable).name, *sys.argv]),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
