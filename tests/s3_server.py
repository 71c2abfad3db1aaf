"""Fixtures: a local S3-compatible server (moto, on 127.0.0.1) and a fresh bucket per test; nothing reaches AWS.

Use from a test module with `from s3_server import s3_bucket  # noqa: F401` (add `s3_server` for the endpoint).
`s3_bucket` sets the AWS environment with monkeypatch, so pyarrow, boto3 and any subprocess the test starts
(e.g. `layerflow-data build --out s3://...`) talk to the same local server.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import uuid

import boto3
import pytest
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# Variables that could point the SDKs elsewhere (a real profile, another endpoint, a real session token).
_CLEARED = ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
            "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")

_lock = threading.Lock()
_server: ThreadedMotoServer | None = None
_endpoint: str | None = None


def endpoint() -> str:
    """The endpoint URL of the one moto server of this process, started on first use (a daemon thread)."""
    global _server, _endpoint
    with _lock:
        if _endpoint is None:
            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request in the test output
            _server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            _server.start()
            host, port = _server.get_host_and_port()
            _endpoint = f"http://{host}:{port}"
            atexit.register(_server.stop)
        return _endpoint


def aws_environment(url: str) -> dict[str, str]:
    """The environment that sends every AWS SDK (and pyarrow) to the local server with fake credentials."""
    empty = os.devnull  # no ~/.aws/config or credentials file: a developer's real profile must not be used
    return {**CREDENTIALS, "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "AWS_ENDPOINT_URL": url,
            "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": empty, "AWS_SHARED_CREDENTIALS_FILE": empty}


@pytest.fixture(scope="session")
def s3_server() -> str:
    """The endpoint URL (`http://127.0.0.1:<port>`) of the local S3 server, shared by the whole session."""
    return endpoint()


@pytest.fixture
def s3_bucket(monkeypatch: pytest.MonkeyPatch) -> str:
    """A new empty bucket on the local server, as `s3://<bucket>`, with the AWS environment pointing at it."""
    url = endpoint()
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in aws_environment(url).items():
        monkeypatch.setenv(name, value)
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    s3_client(url).create_bucket(Bucket=bucket)
    return f"s3://{bucket}"


def s3_client(url: str | None = None):
    """A boto3 client of the local server (to create buckets or look at objects behind pyarrow's back)."""
    return boto3.client("s3", endpoint_url=url or endpoint(), region_name=REGION,
                        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
