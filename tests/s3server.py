"""A real S3 endpoint for tests: moto's ThreadedMotoServer on 127.0.0.1, spoken to over HTTP.

The code under test reaches it exactly as it reaches MinIO: an ``endpointURL``, path-style addressing and
credentials from the environment. One server per test session (starting one takes a second); the
``s3_server`` fixture (tests/conftest.py) resets its state before every test, so buckets never leak from one
test to the next.
"""

from __future__ import annotations

import socket
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: Dummy credentials: moto accepts any, and tests assert that these values never show up anywhere.
ACCESS_KEY_ID = "AKIATESTMOTO0000KEY1"
SECRET_ACCESS_KEY = "moto-test-secret-9f3c2a7b1e"  # noqa: S105 - a fake value for a fake server
REGION = "us-east-1"


def free_port() -> int:
    """A TCP port nobody listens on right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Server:
    """A running moto S3 endpoint."""

    endpoint_url: str

    def env(self) -> dict[str, str]:
        """Environment for a process that should reach this server through the boto3 credential chain."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": REGION,
            # AWS_CONFIG_FILE / shared credentials of the developer's machine must not leak in.
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def object_store(self) -> dict[str, Any]:
        """The ``objectStore`` block (trainer config / run spec wire form) that points at this server."""
        return {"endpointURL": self.endpoint_url, "region": REGION, "addressingStyle": "path"}

    def client(self) -> Any:
        """A plain boto3 client with the dummy credentials (for putting test objects)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )

    def make_bucket(self, name: str) -> str:
        """Create a bucket; returns its name."""
        self.client().create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, data: bytes) -> None:
        """Put one object."""
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def reset(self) -> None:
        """Forget every bucket and object (moto's reset endpoint)."""
        url = f"{self.endpoint_url}/moto-api/reset"
        request = urllib.request.Request(url, method="POST")  # noqa: S310 - our own http://127.0.0.1 server
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            response.read()


@contextmanager
def running_s3_server() -> Iterator[S3Server]:
    """Start a ThreadedMotoServer on 127.0.0.1 and a free port; stop it afterwards."""
    import logging

    from moto.server import ThreadedMotoServer

    # werkzeug logs every request at INFO: thousands of lines in a failing test's output.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(endpoint_url=f"http://127.0.0.1:{port}")
    finally:
        server.stop()


@contextmanager
def error_server(status: int, code: str, message: str = "refused by the test server") -> Iterator[str]:
    """A local HTTP endpoint answering every request with one S3 error (e.g. 403 InvalidAccessKeyId).

    For what moto does not enforce (signatures, throttling): the client still goes through real HTTP and
    botocore's own parsing of the error document. Yields the endpoint URL; ``requests`` counts the calls.
    """
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
        "<RequestId>test</RequestId></Error>"
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body) if self.command != "HEAD" else 0))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
