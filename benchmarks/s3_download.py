"""S3 batch download throughput: the trainer's S3Source vs a plain boto3 ``download_file`` of the same objects.

A moto server runs in its own process on 127.0.0.1 (real HTTP, as MinIO would be). Two workloads: a few
large objects (parallel ranged GETs) and many small ones (one GET each, several objects at a time). For each,
MB/s of ``S3Source.fetch()`` into an empty cache (download + fsync + rename + size, sha256 and, for objects
fetched in one GET, ETag-MD5 verification; reading the bytes back for training is not counted, as the
baseline does not do it) vs one process calling ``client.download_file`` for every object in
turn (boto3's default TransferConfig). Goal: ratio >= 0.9. Then a warm retry (every object verified from the
cache) for reference.

Usage: python benchmarks/s3_download.py [--large 3 --large-mib 32 --small 300 --small-kib 64 --repeats 2]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

GOAL = 0.9
ACCESS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1).read()  # noqa: S310 - our local server
        except OSError:
            time.sleep(0.2)
        else:
            return proc, url
    proc.kill()
    raise SystemExit("moto server did not start")


def client(url: str) -> Any:
    from continual_trainer.config import ObjectStoreClientSpec
    from continual_trainer.objectstore import make_client

    return make_client(ObjectStoreClientSpec(endpoint_url=url, addressing_style="path"))


def upload(url: str, prefix: str, count: int, size: int) -> int:
    from boto3.s3.transfer import TransferConfig

    c = client(url)
    body = os.urandom(size)
    config = TransferConfig(multipart_threshold=64 * 1024 * 1024)  # single part: the ETag is an MD5
    for i in range(count):
        c.upload_fileobj(io.BytesIO(body[i:] + body[:i]), "bench", f"{prefix}/obj-{i:05d}.bin", Config=config)
    return count * size


def plain(url: str, prefix: str, dest: Path) -> float:
    c = client(url)
    start = time.perf_counter()
    keys = []
    for page in c.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix + "/"):
        keys += [o["Key"] for o in page.get("Contents", [])]
    for key in keys:
        c.download_file("bench", key, str(dest / key.rsplit("/", 1)[-1]))
    return time.perf_counter() - start


def ours(url: str, prefix: str, cache: Path) -> float:
    from continual_trainer.objectstore import parse_s3_uri
    from continual_trainer.s3source import S3Source

    source = S3Source(parse_s3_uri(f"s3://bench/{prefix}/"), client(url), cache)
    start = time.perf_counter()
    paths = source.fetch()  # download, verify, fsync, rename: what the baseline does, plus verification
    elapsed = time.perf_counter() - start
    assert paths
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=3)
    parser.add_argument("--large-mib", type=int, default=32)
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--small-kib", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.environ.update(ACCESS)
    proc, url = start_moto()
    work = Path(tempfile.mkdtemp(prefix="s3bench-"))
    try:
        client(url).create_bucket(Bucket="bench")
        sizes = {
            "large": upload(url, "large", args.large, args.large_mib * 1024 * 1024),
            "small": upload(url, "small", args.small, args.small_kib * 1024),
        }
        print(
            f"objects: {args.large} x {args.large_mib} MiB, {args.small} x {args.small_kib} KiB (moto, 127.0.0.1)"
        )
        worst = float("inf")
        for prefix, total in sizes.items():
            plain_s, ours_s, warm_s = [], [], []
            for r in range(args.repeats):
                dest = work / f"plain-{prefix}-{r}"
                dest.mkdir()
                plain_s.append(plain(url, prefix, dest))
                cache = work / f"cache-{prefix}-{r}"
                ours_s.append(ours(url, prefix, cache))
                warm_s.append(ours(url, prefix, cache))
                shutil.rmtree(dest)
                shutil.rmtree(cache)
            mb = total / 1e6
            p, o, w = statistics.median(plain_s), statistics.median(ours_s), statistics.median(warm_s)
            ratio = (mb / o) / (mb / p)
            worst = min(worst, ratio)
            print(
                f"{prefix:>5}: plain download_file {mb / p:8.1f} MB/s | S3Source {mb / o:8.1f} MB/s "
                f"(ratio {ratio:.2f}, goal >= {GOAL}) | warm retry from the verified cache {mb / w:8.1f} MB/s"
            )
        print(f"worst ratio {worst:.2f}: {'meets' if worst >= GOAL else 'MISSES'} the goal >= {GOAL}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
