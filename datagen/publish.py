"""`--out s3://bucket/ds` (any pyarrow filesystem URI): the build works in a local staging folder and publishes to
the store as it commits, so the store holds the same commits a local `--out` would.

- Decoded clips (`_work/*.npz`) pass between the stages through the store's `_work/` when they run on different
  nodes: the decode and matte stages upload what they write, a stage that lacks a clip fetches it.
- Media: the compose stage uploads a sample's four files as soon as it has written them (from whichever node it ran
  on); the stages after it read them back from the staging folder, or fetch them from the store if they run on
  another node.
- A manifest part: its side record, then the part, uploaded after the sample media (`BuildFolder.commit_samples`).
- The end: every part again (the dataset-wide policy rewrites their decision columns), the failures and inputs
  tables and the policy, then `_summary.json` last; the store's `_work/` is deleted.
- Resuming: the record, summary, parts and side records are fetched from the store first, so a rerun on any machine
  skips what the store already holds (decoded inputs are reused only where the staging folder survived).
"""

from __future__ import annotations

import os
from pathlib import Path

from manifests import storage
from manifests.layers import Layer
from manifests.schema import MANIFEST_DIR, media_uri

STAGING_ENV = "LAYERFLOW_STAGING_DIR"  # default: $LAYERFLOW_CACHE_DIR/staging, else ~/.cache/layerflow-data/staging


def staging_dir(uri: str) -> Path:
    """The local folder a build of `uri` works in: the same path on every node, one per destination."""
    root = os.environ.get(STAGING_ENV)
    return (Path(root).expanduser() if root else storage.cache_root() / "staging") / storage.uri_key(uri)


class Mirror:
    """Copies a local build folder's commits to `uri`, in commit order."""

    def __init__(self, uri: str, local: Path) -> None:
        self.uri, self.local = uri, Path(local)

    def pull(self, record_file: str, summary_file: str, parts_dir: str) -> None:
        """Fetch what says what the store has committed: the record, the summary, the parts and their side records."""
        self.local.mkdir(parents=True, exist_ok=True)
        for name in (record_file, summary_file):
            source, target = storage.join(self.uri, name), self.local / name
            if storage.exists(source):
                storage.fetch(source, target)
            else:
                target.unlink(missing_ok=True)  # a staging copy the store no longer has must not count
        for folder in (MANIFEST_DIR, parts_dir):
            storage.download_tree(storage.join(self.uri, folder), self.local / folder)

    def push(self, *names: str) -> None:
        """Upload these files (relative posix paths under the build folder), one after the other."""
        for name in names:
            storage.upload_file(self.local / name, storage.join(self.uri, name))

    def wipe(self) -> None:
        storage.delete_tree(self.uri)

    def delete(self, folder: str) -> None:
        storage.delete_tree(storage.join(self.uri, folder))


def upload_media(local_root: Path, uri: str, sample_id: str) -> None:
    """Publish the four media files of a sample (called by the compose stage on the node that wrote them)."""
    storage.upload_tree(local_root, uri, only=[media_uri(sample_id, layer) for layer in Layer])


def fetch_media(local_root: Path, uri: str, sample_id: str) -> None:
    """Make the four media files of a sample local (a stage on another node than its compose stage)."""
    for layer in Layer:
        obtain(local_root / media_uri(sample_id, layer), local_root, uri)


def share(path: Path, root: Path, uri: str) -> None:
    """Publish a file the build wrote under its staging folder `root` to the same relative path under `uri`."""
    storage.upload_file(path, storage.join(uri, Path(path).relative_to(root).as_posix()))


def obtain(path: Path, root: Path, uri: str) -> Path:
    """`path` (under the staging folder `root`), fetched from `uri` first if this node lacks it."""
    path = Path(path)
    if not path.exists():
        storage.fetch(storage.join(uri, path.relative_to(root).as_posix()), path)
    return path
