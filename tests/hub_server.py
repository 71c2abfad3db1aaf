"""A local stand-in for the Hugging Face Hub (and for plain download URLs), on 127.0.0.1: model-fetching code is
tested through the real client libraries (huggingface_hub, transformers, open_clip, urllib, pooch) with no internet.

    with HubServer() as hub:
        commit = hub.add_repo("org/tiny", {"config.json": b"{}", "model.safetensors": path})
        url = hub.add_url("/releases/download/v1/u2net.onnx", onnx_path)
        point_hub_at(monkeypatch, hub.endpoint, tmp_path / "hf")  # this process and any subprocess started after
        hf_hub_download("org/tiny", "config.json")

What the server answers is what huggingface_hub 2.4 reads (see `file_download.py`, `_snapshot_download.py`,
`hf_api.py` and `utils/_http.py` there):

- `HEAD|GET /{repo_id}/resolve/{revision}/{path}`: the file, with `X-Repo-Commit`, `ETag` (the git blob sha1, or the
  sha256 for an LFS-like file, which also gets `X-Linked-Etag` / `X-Linked-Size`) and `Content-Length`; `Range`
  requests are honoured. No redirect: every file is served from this host.
- `GET /api/models/{repo_id}[/revision/{revision}]`: the model info (`sha`, `siblings` with `rfilename`, `size`,
  `blobId`, `lfs`), which `model_info`, `repo_info`, `repo_exists` and `snapshot_download` read.
- `GET /api/models/{repo_id}/tree/{revision}[/{folder}]?recursive=`: the tree listing (`snapshot_download`,
  `list_repo_files`, transformers' probe of `additional_chat_templates/`), one page.
- `POST /api/models/{repo_id}/paths-info/{revision}`: `get_paths_info`.
- `GET /api/agent-harnesses`: an empty registry (huggingface_hub fetches it once per process for its user agent).
- Errors are 404s with the `X-Error-Code` huggingface_hub maps to an exception: `RepoNotFound`
  (RepositoryNotFoundError), `RevisionNotFound` (RevisionNotFoundError), `EntryNotFound` (RemoteEntryNotFoundError,
  with `X-Repo-Commit` so the miss is cached under `.no_exist/`, as the real hub lets it be).
- Any path given to `add_url`: `HEAD|GET` of that file with `Content-Length` (a GitHub release file, say).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import re
import selectors
import socket
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

_CHUNK = 1 << 20
# What the hub's default .gitattributes sends to LFS (and so what it lists with an `lfs` entry and a sha256 ETag).
_LFS_SUFFIXES = {".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".onnx", ".h5", ".msgpack", ".model", ".npy",
                 ".npz", ".pkl", ".pickle", ".tflite", ".gguf", ".zip", ".tar", ".gz"}
_LFS_MIN_SIZE = 10 * 1024 * 1024
_LFS_POINTER_SIZE = 134  # about what a git-lfs pointer file takes; huggingface_hub only parses it
_DATE = "2024-01-01T00:00:00.000Z"  # every fake commit's date: the listings stay byte-stable
_COMMIT = re.compile(r"[0-9a-f]{40}")
_REPO_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


@dataclass(frozen=True)
class _Blob:
    """One file's content (bytes, or a file read when served: a 150 MB checkpoint need not sit in memory)."""

    size: int
    sha256: str
    git_sha1: str
    lfs: bool
    data: bytes | None = None
    path: Path | None = None

    @classmethod
    def of(cls, name: str, content: bytes | Path) -> _Blob:
        sha256 = hashlib.sha256()
        if isinstance(content, bytes):
            size, chunks, data, path = len(content), iter([content]), content, None
        else:
            path = Path(content).resolve()
            size, chunks, data = path.stat().st_size, _read(path, 0, None), None
        git_sha1 = hashlib.sha1(b"blob %d\0" % size)  # git's object id of the file
        for chunk in chunks:
            sha256.update(chunk)
            git_sha1.update(chunk)
        lfs = Path(name).suffix.lower() in _LFS_SUFFIXES or size >= _LFS_MIN_SIZE
        return cls(size, sha256.hexdigest(), git_sha1.hexdigest(), lfs, data, path)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_sha1

    def chunks(self, start: int, stop: int) -> Iterator[bytes]:
        if self.data is not None:
            yield self.data[start:stop]
        else:
            assert self.path is not None
            yield from _read(self.path, start, stop)


def _read(path: Path, start: int, stop: int | None) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(start)
        left = None if stop is None else stop - start
        while left is None or left > 0:
            chunk = f.read(_CHUNK if left is None else min(_CHUNK, left))
            if not chunk:
                return
            if left is not None:
                left -= len(chunk)
            yield chunk


@dataclass
class _Snapshot:
    """A repo at one commit. `replace_file` edits `files` in place, so the commit keeps its sha."""

    commit: str
    files: dict[str, _Blob]

    def folders(self) -> set[str]:
        return {"/".join(parts[:i]) for parts in (name.split("/") for name in self.files) for i in range(1, len(parts))}


@dataclass
class _Repo:
    main: str
    commits: dict[str, _Snapshot] = field(default_factory=dict)

    def at(self, revision: str) -> _Snapshot | None:
        return self.commits.get(self.main if revision == "main" else revision)


@dataclass
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes | _Blob = b""
    span: tuple[int, int] | None = None  # [start, stop) of a blob body


class _Server(ThreadingHTTPServer):
    """The HTTP server, keeping its open connections so that closing it can cut them (no hang on keep-alive)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, hub: HubServer) -> None:
        self.hub = hub
        self.live: set[socket.socket] = set()
        self.live_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        with self.live_lock:
            self.live.add(sock)
        return sock, address

    def shutdown_request(self, request: Any) -> None:
        with self.live_lock:
            self.live.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        with self.live_lock:
            live = list(self.live)
        for sock in live:
            with contextlib.suppress(OSError):  # already closed by the client
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects of the hub
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no line per request in the test output

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        body = b""
        if method == "POST":
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            response = self.server.hub._answer(method, self.path, self.headers.get("Range"), body)
        except Exception as exc:  # a bug here: a 500 the client reports, rather than a dropped connection
            message = f"fake hub error: {exc!r}".encode("ascii", "backslashreplace")
            response = _Response(500, {"Content-Type": "text/plain"}, message)
        self.send_response(response.status)
        if isinstance(response.body, bytes):
            length = len(response.body)
        else:
            start, stop = response.span or (0, response.body.size)
            length = stop - start
        for name, value in {**response.headers, "Content-Length": str(length)}.items():
            self.send_header(name, value)
        self.end_headers()
        if method == "HEAD":
            return
        try:
            if isinstance(response.body, bytes):
                self.wfile.write(response.body)
            else:
                start, stop = response.span or (0, response.body.size)
                for chunk in response.body.chunks(start, stop):
                    self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up mid-body


def _error(code: str | None, message: str, commit: str | None = None) -> _Response:
    # Header values go out as latin-1: a non-ASCII file name is escaped there (the JSON body keeps it).
    ascii_message = message.encode("ascii", "backslashreplace").decode()
    headers = {"Content-Type": "application/json", "X-Error-Message": ascii_message}
    if code:
        headers["X-Error-Code"] = code
    if commit:
        headers["X-Repo-Commit"] = commit
    return _Response(404, headers, json.dumps({"error": message}).encode())


def _json(value: Any) -> _Response:
    return _Response(200, {"Content-Type": "application/json"}, json.dumps(value).encode())


class HubServer:
    """The fake hub: a threaded HTTP server on 127.0.0.1 (a free port), serving the repos and URLs added to it.

    `requests` lists (method, path) of every request, the path unquoted and without its query, so a test can count
    what reached the network (e.g. no GET of a file that was already cached).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._repos: dict[str, _Repo] = {}
        self._urls: dict[str, _Blob] = {}
        self._requests: list[tuple[str, str]] = []
        self._server = _Server(self)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        # A short poll: `shutdown` waits for the serving loop to notice, up to one poll interval (0.5 s by default).
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), name="hub-server", daemon=True)
        self._thread.start()

    def __enter__(self) -> HubServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and cut the keep-alive connections clients still hold."""
        self._server.shutdown()
        self._server.cut_connections()
        self._server.server_close()
        self._thread.join()

    # --- content ---------------------------------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: Mapping[str, bytes | Path], commit: str | None = None) -> str:
        """Serve `files` (repo path -> content) as `repo_id` at revision `main` and at the returned commit sha.

        The sha is derived from the repo id and the contents unless given. Adding the same repo again moves `main`
        to the new commit; the earlier commits stay servable by their sha, as on the real hub."""
        if not _REPO_ID.fullmatch(repo_id):
            raise ValueError(f"repo id {repo_id!r} is not `name` or `org/name`")
        blobs = {name.strip("/"): _Blob.of(name, content) for name, content in files.items()}
        if commit is None:
            digest = hashlib.sha1(repo_id.encode())
            for name in sorted(blobs):
                digest.update(f"\0{name}\0{blobs[name].sha256}".encode())
            commit = digest.hexdigest()
        if not _COMMIT.fullmatch(commit):
            raise ValueError(f"commit {commit!r} is not 40 lowercase hex digits")
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo(main=commit))
            repo.main = commit
            repo.commits[commit] = _Snapshot(commit, blobs)
        return commit

    def replace_file(self, repo_id: str, filename: str, data: bytes | Path) -> None:
        """Serve other bytes as `filename` of `repo_id` at `main`, under the same commit sha (a corrupted or tampered
        download). The headers describe the new bytes, so huggingface_hub's size check passes: refusing the file
        is up to the code under test."""
        blob = _Blob.of(filename, data)
        with self._lock:
            snapshot = self._repos[repo_id].at("main")
            assert snapshot is not None
            if filename not in snapshot.files:
                raise KeyError(f"{repo_id} has no file {filename!r} to replace")
            snapshot.files[filename] = blob

    def add_url(self, path: str, data: bytes | Path) -> str:
        """Serve `data` at `endpoint + path` (HEAD and GET, with Content-Length) and return that URL."""
        if not path.startswith("/"):
            raise ValueError(f"URL path {path!r} must start with '/'")
        with self._lock:
            self._urls[path] = _Blob.of(path, data)
        return self.endpoint + path

    def replace_url(self, path: str, data: bytes | Path) -> None:
        """Serve other bytes at a path given to `add_url` before."""
        blob = _Blob.of(path, data)
        with self._lock:
            if path not in self._urls:
                raise KeyError(f"no URL {path!r} to replace")
            self._urls[path] = blob

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        """Forget the requests seen so far."""
        with self._lock:
            self._requests.clear()

    # --- answering -------------------------------------------------------------------------------------------

    def _answer(self, method: str, raw_path: str, range_header: str | None, body: bytes) -> _Response:
        split = urlsplit(raw_path)
        path = unquote(split.path)
        with self._lock:
            self._requests.append((method, path))
            if path in self._urls:
                return _file(self._urls[path], {}, range_header)
            segments = [unquote(part) for part in split.path.strip("/").split("/")]
            if segments[:2] == ["api", "agent-harnesses"]:
                return _json({"standardEnvVars": [], "harnesses": {}})
            if segments[:2] == ["api", "models"]:
                return self._api(method, segments[2:], parse_qs(split.query), body)
            for n in (2, 1):
                if len(segments) > n + 1 and segments[n] == "resolve" and method in ("GET", "HEAD"):
                    return self._resolve("/".join(segments[:n]), segments[n + 1], "/".join(segments[n + 2:]),
                                         range_header)
        return _error(None, f"no route for {method} {path}")

    def _find(self, repo_id: str, revision: str) -> _Snapshot | _Response:
        repo = self._repos.get(repo_id)
        if repo is None:
            return _error("RepoNotFound", f"Repository {repo_id} not found")
        snapshot = repo.at(revision)
        if snapshot is None:
            return _error("RevisionNotFound", f"Invalid rev id: {revision}")
        return snapshot

    def _resolve(self, repo_id: str, revision: str, filename: str, range_header: str | None) -> _Response:
        snapshot = self._find(repo_id, revision)
        if isinstance(snapshot, _Response):
            return snapshot
        blob = snapshot.files.get(filename)
        if blob is None:
            return _error("EntryNotFound", f"Entry not found: {filename}", commit=snapshot.commit)
        headers = {"X-Repo-Commit": snapshot.commit, "ETag": f'"{blob.etag}"'}
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)})
        return _file(blob, headers, range_header)

    def _api(self, method: str, segments: list[str], query: dict[str, list[str]], body: bytes) -> _Response:
        for n in (2, 1):
            repo_id = "/".join(segments[:n])
            if len(segments) >= n and repo_id in self._repos:
                rest = segments[n:]
                break
        else:
            return _error("RepoNotFound", f"Repository {'/'.join(segments[:2])} not found")
        if method == "POST" and len(rest) == 2 and rest[0] == "paths-info":
            snapshot = self._find(repo_id, rest[1])
            if isinstance(snapshot, _Response):
                return snapshot
            form = parse_qs(body.decode())
            expand = form.get("expand", ["false"])[0].lower() == "true"
            return _json(_entries(snapshot, form.get("paths", []), expand))
        if method not in ("GET", "HEAD"):
            return _error(None, f"{method} is not served here")
        if not rest or (len(rest) == 2 and rest[0] == "revision"):
            snapshot = self._find(repo_id, rest[1] if rest else "main")
            return snapshot if isinstance(snapshot, _Response) else _json(_model_info(repo_id, snapshot))
        if len(rest) >= 2 and rest[0] == "tree":
            snapshot = self._find(repo_id, rest[1])
            if isinstance(snapshot, _Response):
                return snapshot
            folder = "/".join(rest[2:]).strip("/")
            if folder and folder not in snapshot.folders():
                return _error("EntryNotFound", f"{folder} does not exist on {rest[1]}", commit=snapshot.commit)
            recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
            expand = query.get("expand", ["false"])[0].lower() in ("true", "1")
            prefix = f"{folder}/" if folder else ""
            paths = [p for p in sorted(snapshot.files.keys() | snapshot.folders())
                     if p.startswith(prefix) and (recursive or "/" not in p[len(prefix):])]
            return _json(_entries(snapshot, paths, expand))
        return _error(None, f"no API route {'/'.join(rest)}")


def _file(blob: _Blob, headers: dict[str, str], range_header: str | None) -> _Response:
    """A 200 with the whole blob, or a 206 with the one `bytes=start-[end]` range asked for."""
    headers = {**headers, "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", (range_header or "").strip())
    if match is None:
        return _Response(200, headers, blob)
    start, stop = int(match[1]), min(int(match[2]) + 1 if match[2] else blob.size, blob.size)
    if start >= blob.size:
        return _Response(416, {**headers, "Content-Range": f"bytes */{blob.size}"})
    return _Response(206, {**headers, "Content-Range": f"bytes {start}-{stop - 1}/{blob.size}"}, blob, (start, stop))


def _entries(snapshot: _Snapshot, paths: list[str], expand: bool) -> list[dict[str, Any]]:
    """Tree / paths-info entries (`RepoFile` / `RepoFolder` JSON) of the paths that exist, in the given order."""
    folders = snapshot.folders()
    entries: list[dict[str, Any]] = []
    for path in paths:
        path = path.strip("/")
        blob = snapshot.files.get(path)
        if blob is not None:
            entry: dict[str, Any] = {"type": "file", "oid": blob.git_sha1, "size": blob.size, "path": path}
            if blob.lfs:
                entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": _LFS_POINTER_SIZE}
        elif path in folders:
            entry = {"type": "directory", "oid": hashlib.sha1(f"{snapshot.commit}/{path}".encode()).hexdigest(),
                     "size": 0, "path": path}
        else:
            continue
        if expand:
            entry["lastCommit"] = {"id": snapshot.commit, "title": "fake hub commit", "date": _DATE}
        entries.append(entry)
    return entries


def _model_info(repo_id: str, snapshot: _Snapshot) -> dict[str, Any]:
    """What `GET /api/models/...` returns, with every sibling's size / blob id / LFS info (as with `blobs=True`)."""
    siblings = []
    for name in sorted(snapshot.files):
        blob = snapshot.files[name]
        sibling: dict[str, Any] = {"rfilename": name, "size": blob.size, "blobId": blob.git_sha1}
        if blob.lfs:
            sibling["lfs"] = {"sha256": blob.sha256, "size": blob.size, "pointerSize": _LFS_POINTER_SIZE}
        siblings.append(sibling)
    info: dict[str, Any] = {
        "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
        "author": repo_id.split("/")[0] if "/" in repo_id else None, "sha": snapshot.commit,
        "lastModified": _DATE, "createdAt": _DATE, "private": False, "gated": False, "disabled": False,
        "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
        "usedStorage": sum(blob.size for blob in snapshot.files.values()),
    }
    config = snapshot.files.get("config.json")
    if config is not None and config.size < _CHUNK:
        try:
            parsed = json.loads(b"".join(config.chunks(0, config.size)))
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):  # the hub shows a few keys of config.json
            info["config"] = {key: parsed[key] for key in ("architectures", "model_type") if key in parsed}
    return info


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and never answers: a hub or URL that hangs.

    It reads (and drops) what clients send and holds each socket until the client closes it or the server is
    closed; `connections` counts the connections accepted.

    huggingface_hub pointed at it hangs long: an uncached `hf_hub_download` waits `constants.HF_HUB_ETAG_TIMEOUT`
    (10 s) for its HEAD, then tries it 6 more times, each waiting `file_download._ETAG_RETRY_TIMEOUT` (60 s, not read
    from the environment), with 1-8 s backoffs in between: about 6.5 minutes (384 s measured with a 1 s ETag
    timeout). A test of a hanging hub must bound that (patch those, or the code under test has its own deadline)."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._connections = 0
        self._wake_read, self._wake_write = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_read, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._loop, name="silent-server", daemon=True)
        self._thread.start()

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Wake the loop, which closes every socket; returns once it has."""
        if self._thread.is_alive():
            self._wake_write.send(b"x")
            self._thread.join()
        self._wake_write.close()

    def _loop(self) -> None:
        try:
            while True:
                for key, _ in self._selector.select():
                    if key.data == "wake":
                        return
                    if key.data == "accept":
                        try:
                            connection, _address = self._listener.accept()
                        except BlockingIOError:
                            continue
                        connection.setblocking(False)
                        self._selector.register(connection, selectors.EVENT_READ, "client")
                        with self._lock:
                            self._connections += 1
                        continue
                    client: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = client.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    if not data:  # the client closed (or reset) its end
                        self._selector.unregister(client)
                        client.close()
        finally:
            for key in list(self._selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            self._selector.close()


# --- pointing the clients at a server ------------------------------------------------------------------------

# Variables that would send huggingface_hub elsewhere, keep it offline, or hand it a developer's real token.
_CLEARED = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_CO_STAGING", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
            "HF_TOKEN_PATH", "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE", "HUGGINGFACE_ASSETS_CACHE", "HF_XET_CACHE",
            "HF_MODULES_CACHE", "HF_HUB_DISABLE_TELEMETRY")


def point_hub_at(monkeypatch: pytest.MonkeyPatch, endpoint: str, hf_home: Path) -> None:
    """Make this process, and any subprocess started afterwards with `os.environ`, use `endpoint` as the hub and
    `hf_home` as HF_HOME (its caches, token file, ...): nothing is read from or written to the real ~/.cache.

    The environment alone is enough for a fresh process. In this one huggingface_hub has read it at import, into
    `huggingface_hub.constants` (ENDPOINT, HUGGINGFACE_CO_URL_TEMPLATE, HF_HUB_CACHE, HF_HUB_OFFLINE, ...) and into
    `huggingface_hub.hf_api.api`, the HfApi behind the module-level `model_info` & co. (its `endpoint` is fixed when
    built), and transformers keeps a lazily built HfApi of its own (`transformers.utils.hub._hf_api`): all are
    patched, and monkeypatch puts them back after the test."""
    endpoint = endpoint.rstrip("/")
    home = Path(hf_home).resolve()
    hub_cache, assets, xet = str(home / "hub"), str(home / "assets"), str(home / "xet")
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in {"HF_ENDPOINT": endpoint, "HF_HOME": str(home), "HF_HUB_CACHE": hub_cache,
                        "HF_HUB_DISABLE_TELEMETRY": "1"}.items():
        monkeypatch.setenv(name, value)

    from huggingface_hub import constants

    hf_api = importlib.import_module("huggingface_hub.hf_api")
    host = urlsplit(endpoint).hostname or ""
    token = str(home / "token")
    values: dict[str, Any] = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": frozenset(constants.HF_URL_HOSTS | {host.lower()}),
        "_staging_mode": False,
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HOME": str(home),
        "default_cache_path": hub_cache, "HUGGINGFACE_HUB_CACHE": hub_cache, "HF_HUB_CACHE": hub_cache,
        "default_assets_cache_path": assets, "HUGGINGFACE_ASSETS_CACHE": assets, "HF_ASSETS_CACHE": assets,
        "default_xet_cache_path": xet, "HF_XET_CACHE": xet,
        "HF_TOKEN_PATH": token, "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "CHECK_FOR_UPDATE_DONE_PATH": str(home / ".check_for_update_done"),
        "CHECK_FOR_SKILL_UPDATE_DONE_PATH": str(home / ".check_for_skill_update_done"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
    }
    for name, value in values.items():
        monkeypatch.setattr(constants, name, value, raising=False)
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)

    http = sys.modules.get("huggingface_hub.utils._http")
    if http is not None and hasattr(http, "_HUB_ORIGINS"):  # origins whose redirects are followed, fixed at import
        monkeypatch.setattr(http, "_HUB_ORIGINS", http._HUB_ORIGINS | {http._url_origin(endpoint)})

    if importlib.util.find_spec("transformers") is not None:
        # Imported now even if the test has not yet: an HfApi transformers built during the test, with this
        # endpoint, must not outlive it.
        hub = importlib.import_module("transformers.utils.hub")
        monkeypatch.setattr(hub, "_hf_api", None)
        modules = str(home / "modules")
        for name in ("transformers.utils.hub", "transformers.dynamic_module_utils", "transformers.file_utils"):
            module = sys.modules.get(name)
            if module is not None and hasattr(module, "HF_MODULES_CACHE"):
                monkeypatch.setattr(module, "HF_MODULES_CACHE", modules)
