"""S3Source against a real endpoint (moto over HTTP): listing, cache, verification and failures, no training."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from tests.s3server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, S3Server, error_server

from continual_trainer.config import ObjectStoreClientSpec
from continual_trainer.exitcodes import BadDataError, ExitCode, PermanentError, TransientError
from continual_trainer.objectstore import Credentials, RetryPolicy, make_client, parse_s3_uri
from continual_trainer.s3source import S3Source, S3SourceOptions, canonical_listing

FAST_RETRY = RetryPolicy(attempts=3, base_delay_seconds=0.01, max_delay_seconds=0.02)


def client_for(endpoint_url: str) -> Any:
    spec = ObjectStoreClientSpec(endpoint_url=endpoint_url, region="us-east-1", addressing_style="path")
    return make_client(spec, credentials=Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY))


def source(server: S3Server, uri: str, cache: Path, **options: Any) -> S3Source:
    opts = S3SourceOptions(retry=FAST_RETRY, **options)
    return S3Source(parse_s3_uri(uri), client_for(server.endpoint_url), cache, opts)


def count_gets(src: S3Source) -> list[str]:
    """Record the key of every GetObject the source's client sends."""
    keys: list[str] = []
    src.client.meta.events.register(
        "before-call.s3.GetObject", lambda params, **_: keys.append(params["url_path"].rsplit("/", 1)[-1])
    )
    return keys


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    s3_server.make_bucket("data")
    s3_server.put("data", "p/b.txt", b"second\n")
    s3_server.put("data", "p/a.jsonl", b'{"text": "first"}\n')
    s3_server.put("data", "p/sub/c.txt", b"third\n")
    s3_server.put("data", "p/_SUCCESS", b"")
    s3_server.put("data", "p/.hidden", b"not data")
    s3_server.put("data", "p/dir/", b"")
    return "data"


def test_prefix_lists_in_key_order_skips_markers_and_caches_every_object(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    src = source(s3_server, "s3://data/p/", tmp_path / "cache", page_size=2)
    files = src.files()
    assert [(f.name, f.data) for f in files] == [
        ("a.jsonl", b'{"text": "first"}\n'),
        ("b.txt", b"second\n"),
        ("sub/c.txt", b"third\n"),
    ]
    assert (tmp_path / "cache" / "sub" / "c.txt").read_bytes() == b"third\n"
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_a_verified_cache_is_reused_and_a_corrupted_file_downloaded_again(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    source(s3_server, "s3://data/p/", cache).files()

    again = source(s3_server, "s3://data/p/", cache)
    gets = count_gets(again)
    assert [f.data for f in again.files()][1] == b"second\n"
    assert gets == []  # everything came from the verified cache

    (cache / "b.txt").write_bytes(b"SECOND\n")  # same size, other bytes: only the sha256 tells
    (cache / "sub" / "c.txt").write_bytes(b"thi")  # truncated
    third = source(s3_server, "s3://data/p/", cache)
    gets = count_gets(third)
    assert [f.data for f in third.files()] == [b'{"text": "first"}\n', b"second\n", b"third\n"]
    assert sorted(gets) == ["b.txt", "c.txt"]
    assert (cache / "b.txt").read_bytes() == b"second\n"


def test_a_re_uploaded_object_is_downloaded_again_not_taken_from_the_cache(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    source(s3_server, "s3://data/p/b.txt", cache).files()
    s3_server.put("data", "p/b.txt", b"changed\n")
    assert source(s3_server, "s3://data/p/b.txt", cache).files()[0].data == b"changed\n"


def test_pinned_sha256_of_an_object_and_of_a_prefix_listing(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    good = hashlib.sha256(b"second\n").hexdigest()
    assert source(s3_server, "s3://data/p/b.txt", tmp_path / "c1", sha256=good).files()[0].data == b"second\n"

    listing = "".join(
        f"{name}\t{len(data)}\t{hashlib.sha256(data).hexdigest()}\n"
        for name, data in [
            ("a.jsonl", b'{"text": "first"}\n'),
            ("b.txt", b"second\n"),
            ("sub/c.txt", b"third\n"),
        ]
    ).encode()
    entries = [(n, s, h) for n, s, h in (line.split("\t") for line in listing.decode().splitlines())]
    assert canonical_listing([(n, int(s), h) for n, s, h in reversed(entries)]) == listing
    pinned = hashlib.sha256(listing).hexdigest()
    assert len(source(s3_server, "s3://data/p/", tmp_path / "c2", sha256=pinned).files()) == 3

    with pytest.raises(PermanentError) as info:
        source(s3_server, "s3://data/p/", tmp_path / "c3", sha256="0" * 64).files()
    assert info.value.exit_code == ExitCode.PERMANENT
    assert info.value.reason == "ChecksumMismatch"
    assert "s3://data/p/" in info.value.message
    assert pinned in info.value.message  # what the data hashes to now: the fix is one edit away
    assert not (tmp_path / "c3").exists()  # unverified bytes are not left where a retry could train them


def test_large_objects_take_the_multi_part_path_and_are_verified(s3_server: S3Server, tmp_path: Path) -> None:
    s3_server.make_bucket("big")
    payload = (b"line of text for a large object\n" * 200_000)[: 6 * 1024 * 1024 + 123]
    s3_server.put("big", "one.txt", payload)  # single part: its ETag is the MD5
    uploader = s3_server.client()
    uploader.upload_fileobj(
        io.BytesIO(payload), "big", "multi.txt", Config=TransferConfig(multipart_threshold=5 * 1024 * 1024)
    )
    assert "-" in uploader.head_object(Bucket="big", Key="multi.txt")["ETag"]
    src = source(
        s3_server, "s3://big/", tmp_path / "cache", multipart_threshold=1024 * 1024, chunk_size=1024 * 1024
    )
    gets = count_gets(src)
    files = src.files()
    assert [f.data == payload for f in files] == [True, True]
    assert len(gets) > 4  # ranged GETs, several per object

    # With the MD5 check on: the single-part object's ETag is checked, the multipart one's cannot be.
    checked = source(
        s3_server,
        "s3://big/",
        tmp_path / "cache-md5",
        multipart_threshold=1024 * 1024,
        chunk_size=1024 * 1024,
        md5_for_large_objects=True,
    )
    assert [f.data == payload for f in checked.files()] == [True, True]


def test_missing_bucket_and_missing_key_are_permanent_and_name_the_uri(
    s3_server: S3Server, tmp_path: Path
) -> None:
    with pytest.raises(PermanentError, match=r"s3://no-such-bucket/p/: the bucket does not exist") as info:
        source(s3_server, "s3://no-such-bucket/p/", tmp_path / "c").files()
    assert info.value.reason == "DataNotFound"
    s3_server.make_bucket("data")
    with pytest.raises(PermanentError, match=r"s3://data/absent\.jsonl: no such object") as info:
        source(s3_server, "s3://data/absent.jsonl", tmp_path / "c").files()
    assert info.value.reason == "DataNotFound"
    with pytest.raises(BadDataError, match=r"s3://data/empty/: no objects below this prefix"):
        source(s3_server, "s3://data/empty/", tmp_path / "c").files()


def test_an_unsafe_key_is_refused_not_written_outside_the_cache(s3_server: S3Server, tmp_path: Path) -> None:
    s3_server.make_bucket("data")
    s3_server.put("data", "p/a//b.txt", b"x\n")
    with pytest.raises(BadDataError, match=r"empty, '\.' or '\.\.' path segment"):
        source(s3_server, "s3://data/p/", tmp_path / "cache").files()
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def delete_on_first_get(src: S3Source, server: S3Server, bucket: str, key: str) -> None:
    deleted: list[bool] = []

    def hook(params: dict[str, Any], **_: Any) -> None:
        if not deleted and params["url_path"].endswith("/" + key):
            server.client().delete_object(Bucket=bucket, Key=key)
            deleted.append(True)

    src.client.meta.events.register("before-call.s3.GetObject", hook)


def test_object_deleted_between_listing_and_reading(s3_server: S3Server, bucket: str, tmp_path: Path) -> None:
    # One object: listed (HEAD), deleted, then the GET fails; the re-listing finds it gone for good.
    one = source(s3_server, "s3://data/p/b.txt", tmp_path / "c1")
    delete_on_first_get(one, s3_server, "data", "p/b.txt")
    with pytest.raises(PermanentError, match=r"s3://data/p/b\.txt: no such object"):
        one.files()

    # A prefix: the batch is what the prefix holds when it is listed again (pin sha256 to forbid that).
    s3_server.put("data", "p/b.txt", b"second\n")
    prefix = source(s3_server, "s3://data/p/", tmp_path / "c2")
    delete_on_first_get(prefix, s3_server, "data", "p/sub/c.txt")
    assert [f.name for f in prefix.files()] == ["a.jsonl", "b.txt"]


def test_object_deleted_while_read_every_time_is_transient(s3_server: S3Server, tmp_path: Path) -> None:
    s3_server.make_bucket("data")
    s3_server.put("data", "p/b.txt", b"second\n")
    src = source(s3_server, "s3://data/p/", tmp_path / "c")

    def hook(**_: Any) -> None:  # a producer that keeps replacing it: delete, then put again
        s3_server.client().delete_object(Bucket="data", Key="p/b.txt")

    def put_back(**_: Any) -> None:
        s3_server.put("data", "p/b.txt", b"second\n")

    src.client.meta.events.register("before-call.s3.GetObject", hook)
    src.client.meta.events.register("after-call.s3.GetObject", put_back)
    with pytest.raises(
        TransientError, match=r"s3://data/p/: .*changed or disappeared after it was listed"
    ) as info:
        src.files()
    assert info.value.exit_code == ExitCode.TRANSIENT


@pytest.mark.parametrize(
    ("status", "code", "exc_type", "words"),
    [
        (403, "InvalidAccessKeyId", PermanentError, "access denied (InvalidAccessKeyId)"),
        (403, "SignatureDoesNotMatch", PermanentError, "credentialsSecretRef"),
        (503, "SlowDown", TransientError, "throttling"),
        (500, "InternalError", TransientError, "retried"),
    ],
)
def test_store_errors_over_http(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int, code: str, exc_type: type, words: str
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries: shown by the transient class
    with error_server(status, code, f"key {SECRET_ACCESS_KEY} refused") as url:
        spec = ObjectStoreClientSpec(endpoint_url=url, addressing_style="path")
        client = make_client(spec, credentials=Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY))
        src = S3Source(
            parse_s3_uri("s3://data/p/"), client, tmp_path / "c", S3SourceOptions(retry=FAST_RETRY)
        )
        with pytest.raises(exc_type) as info:
            src.files()
    message = info.value.message
    assert words in message
    assert "s3://data/p/" in message
    assert SECRET_ACCESS_KEY not in message
    assert ACCESS_KEY_ID not in message


def test_a_key_that_is_also_a_folder_is_refused_by_name(s3_server: S3Server, tmp_path: Path) -> None:
    s3_server.make_bucket("data")
    s3_server.put("data", "p/a", b"file\n")
    s3_server.put("data", "p/a/b.txt", b"below\n")
    with pytest.raises(BadDataError, match=r"the keys 'a' and 'a/b\.txt' .* cannot both be files"):
        source(s3_server, "s3://data/p/", tmp_path / "cache").files()
