"""Exactly-once, resumable builds: what a dataset folder has already committed, and committing more.

A build writes `DS/_build.json` (what it is building: source, inputs, settings) before any work. Then:
- an input is committed when its row is written to `_work/inputs/<input_id>.json` (its decoded, matted clip is
  already in `_work/<input_id>.npz`, itself written by rename);
- samples are committed a manifest part at a time: the part's side record (`_work/parts/<part>.json`: why scores are
  null, devices, timings) first, then the part itself, renamed into `manifest/` in one step.
Sample ids are deterministic, so rerunning the same build skips every committed input and sample and makes the rest:
after any crash the manifest holds each sample exactly once. A rerun with other settings, or over a source whose
inputs changed, would mix two datasets in one folder and is refused: the record names the inputs by id and version
(size and modification time, an object's ETag), and the identity rules (`manifests.identity.IDENTITY_VERSION`) the ids
were made by. `_summary.json` with `complete: true` is written last.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.dataset as ds

from datagen.config import RUNTIME_FIELDS, BuildConfig
from datagen.publish import Mirror
from datagen.rows import InputRow, decode, encode
from datagen.sources import SourceItem
from filters.apply import POLICY_FILE
from manifests import io
from manifests.errors import ConfigError
from manifests.identity import IDENTITY_VERSION
from manifests.schema import MANIFEST_DIR, MEDIA_DIR, SAMPLE_ID, SCHEMA_VERSION

RECORD_FILE = "_build.json"
WORK_DIR = "_work"
LOCK_FILE = "lock"
PARTS_DIR = f"{WORK_DIR}/parts"


def build_record(source: str, backgrounds: str | None, config: BuildConfig, clip_spec: str | None,
                 items: list[SourceItem], models: dict | None = None) -> dict:
    """What a dataset is built from; two runs may share a folder only if their records are equal."""
    settings = {k: v for k, v in config.to_dict().items() if k not in RUNTIME_FIELDS}
    input_ids = [item.input_id for item in items]
    versions = sorted(f"{item.input_id} {item.version}" for item in items)
    return {
        "schema_version": SCHEMA_VERSION,
        "identity": IDENTITY_VERSION,
        "source": source,
        "backgrounds": backgrounds,
        "config": json.loads(json.dumps(settings)),  # tuples as lists, as they read back from the file
        "clip": clip_spec,
        "models": models or {},  # what each learned stage runs and the weights it is pinned to
        "inputs": len(input_ids),
        "inputs_sha1": hashlib.sha1("\n".join(sorted(input_ids)).encode()).hexdigest(),
        "versions_sha1": hashlib.sha1("\n".join(versions).encode()).hexdigest(),
    }


@dataclass
class Committed:
    """What earlier runs of this build committed."""

    inputs: dict[str, InputRow] = field(default_factory=dict)  # input_id -> finished input row
    samples: set[str] = field(default_factory=set)  # sample ids in the manifest
    complete: bool = False  # the build finished: `_summary.json` says complete


class BuildFolder:
    """The dataset folder of one build: its record, lock, and committed inputs and samples."""

    def __init__(self, out: Path, mirror: Mirror | None = None) -> None:
        """`mirror`: where the commits are published when `--out` is on object storage (`out` is then staging)."""
        self.out = Path(out)
        self.mirror = mirror
        self.work = self.out / WORK_DIR
        self.inputs_dir = self.work / "inputs"
        self.parts_dir = self.out / PARTS_DIR

    def open(self, record: dict, overwrite: bool) -> Committed:
        """Start a build at `out`, or resume the one there; refuse one that would mix two datasets."""
        if self.mirror is not None:
            if overwrite:
                self.mirror.wipe()
            else:  # what the store has committed decides, not what this staging folder remembers
                for folder in (self.out / MANIFEST_DIR, self.parts_dir):
                    shutil.rmtree(folder, ignore_errors=True)
                self.mirror.pull(RECORD_FILE, io.SUMMARY_FILE, PARTS_DIR)
        existing = self._read_record()
        # (with a mirror, media left in the staging folder say nothing: the store's manifest and summary do)
        markers = (MANIFEST_DIR, io.SUMMARY_FILE) if self.mirror is not None else (MANIFEST_DIR, MEDIA_DIR,
                                                                                   io.SUMMARY_FILE)
        has_data = any((self.out / name).exists() for name in markers)
        if overwrite:
            self._wipe()
        elif existing is None and has_data:
            raise ConfigError(f"--out: {self.out} already holds a dataset without a {RECORD_FILE} (an older or "
                              "unfinished format); choose a new --out or pass --overwrite")
        elif existing is not None and existing != record:
            raise ConfigError(f"--out: {self.out} holds a build of something else ({_differences(existing, record)}); "
                              "rerun with its settings to resume it, choose a new --out, or pass --overwrite to "
                              "rebuild it from scratch")
        committed = self._committed() if existing is not None and not overwrite else Committed()
        if committed.complete:  # nothing to do, and nothing is touched
            return committed
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(exist_ok=True)
        self._lock()
        io.write_json_atomic(record, self.out / RECORD_FILE)
        if self.mirror is not None:
            self.mirror.push(RECORD_FILE)
        return committed

    def close(self) -> None:
        (self.work / LOCK_FILE).unlink(missing_ok=True)

    def commit_input(self, row: InputRow) -> None:
        io.write_text_atomic(encode(row), self.inputs_dir / f"{row.input_id}.json")

    def commit_samples(self, rows: list[dict], record: dict) -> Path:
        """Side record first, then the part: a part on disk always has its record."""
        name = io.manifest_part_name(rows)
        io.write_json_atomic(record, self.parts_dir / f"{name}.json")
        path = io.write_manifest_part(self.out, rows)
        if self.mirror is not None:  # the media are already there (the compose stage published them)
            self.mirror.push(f"{PARTS_DIR}/{name}.json", f"{MANIFEST_DIR}/{name}")
        return path

    def publish_final(self) -> None:
        """Object storage: the parts again (the policy rewrote them), the tables, then the summary; drop `_work/`."""
        if self.mirror is None:
            return
        parts = sorted(f"{MANIFEST_DIR}/{p.name}" for p in (self.out / MANIFEST_DIR).glob("part-*.parquet"))
        tables = [name for name in (io.FAILURES_FILE, io.INPUTS_FILE, POLICY_FILE) if (self.out / name).exists()]
        self.mirror.push(*parts, *tables, io.SUMMARY_FILE)
        self.mirror.delete(WORK_DIR)

    def part_records(self) -> list[dict]:
        """The side records of the manifest parts on disk."""
        parts = {path.name for path in (self.out / MANIFEST_DIR).glob("part-*.parquet")}
        records = []
        for path in sorted(self.parts_dir.glob("*.json")):
            if path.stem in parts:
                records.append(json.loads(path.read_text(encoding="utf-8")))
        return records

    def _committed(self) -> Committed:
        complete = (self.out / io.SUMMARY_FILE).exists() and io.read_summary(self.out).get("complete")
        inputs = {}
        for path in sorted(self.inputs_dir.glob("*.json")):
            row = decode(path.read_text(encoding="utf-8"), InputRow)
            # a committed input is usable only with its clip file (`--keep-work` off deletes them at the end)
            if all(Path(clip).exists() for clip in (row.clip_path, row.background_path) if clip):
                inputs[row.input_id] = row
        return Committed(inputs=inputs, samples=committed_sample_ids(self.out), complete=bool(complete))

    def _lock(self) -> None:
        """One build per folder at a time; a lock left by a killed build is taken over."""
        lock = self.work / LOCK_FILE
        holder = {"host": socket.gethostname(), "pid": os.getpid()}
        if lock.exists():
            try:
                other = json.loads(lock.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                other = {}
            if other.get("host") == holder["host"] and other.get("pid") != holder["pid"] and _alive(other["pid"]):
                raise ConfigError(f"--out: another build (pid {other['pid']}) is writing {self.out}; wait for it "
                                  "or stop it first")
        io.write_json_atomic(holder, lock)

    def _read_record(self) -> dict | None:
        path = self.out / RECORD_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def _wipe(self) -> None:
        for name in (MANIFEST_DIR, MEDIA_DIR, WORK_DIR, io.SUMMARY_FILE, io.FAILURES_FILE, io.INPUTS_FILE, RECORD_FILE,
                     POLICY_FILE):
            path = self.out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def committed_sample_ids(out: Path) -> set[str]:
    """Sample ids in the manifest parts on disk (reads one column)."""
    files = sorted(str(p) for p in (Path(out) / MANIFEST_DIR).glob("part-*.parquet"))
    if not files:
        return set()
    return set(ds.dataset(files, format="parquet").to_table(columns=[SAMPLE_ID]).column(0).to_pylist())


def _differences(old: dict, new: dict) -> str:
    changed = []
    for key in sorted(set(old) | set(new)):
        if key == "config":
            changed += [f"{k}: {old[key].get(k)!r} -> {new[key].get(k)!r}"
                        for k in sorted(set(old[key]) | set(new[key])) if old[key].get(k) != new[key].get(k)]
        elif key == "inputs_sha1":
            if old.get(key) != new.get(key):
                changed.append(f"the source's inputs changed ({old.get('inputs')} then, {new.get('inputs')} now)")
        elif key == "versions_sha1":
            if old.get(key) != new.get(key) and old.get("inputs_sha1") == new.get("inputs_sha1"):
                changed.append("an input changed since (its modification time, or its ETag on object storage)")
        elif key == "identity":
            if old.get(key) != new.get(key):
                changed.append(f"input ids are made another way, or splits drawn another way (identity "
                               f"{old.get(key) or '1'} then, {new.get(key)} now: sample ids or splits differ)")
        elif key != "inputs" and old.get(key) != new.get(key):
            changed.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return "; ".join(changed)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
