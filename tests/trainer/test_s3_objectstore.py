"""The object store module and the data contract: URIs, the config fields, clients against a real endpoint."""

from __future__ import annotations

import pytest
from botocore import exceptions as bex
from pydantic import ValidationError
from tests.s3server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, S3Server

from continual_trainer.config import DataSpec, ObjectStoreClientSpec
from continual_trainer.objectstore import (
    Credentials,
    RetryPolicy,
    call_with_retries,
    classify,
    describe,
    make_client,
    parse_s3_uri,
)


def test_parse_s3_uri_objects_and_prefixes() -> None:
    one = parse_s3_uri("s3://my-bucket/data/2026/part-0001.jsonl")
    assert (one.bucket, one.key, one.is_prefix) == ("my-bucket", "data/2026/part-0001.jsonl", False)
    assert parse_s3_uri("s3://my-bucket/data/").is_prefix
    assert parse_s3_uri("s3://my-bucket").is_prefix
    assert parse_s3_uri("s3://my-bucket/data/").uri == "s3://my-bucket/data/"


@pytest.mark.parametrize(
    "uri",
    ["https://bucket/key", "s3://", "s3://Bad_Bucket/key", "s3://ab/key", "s3://b-ok//x", "s3://b-ok/a/../b"],
)
def test_parse_s3_uri_refuses_malformed_uris_naming_them(uri: str) -> None:
    with pytest.raises(ValueError, match="expected s3://bucket/key") as info:
        parse_s3_uri(uri)
    assert repr(uri) in str(info.value)


def test_data_spec_takes_exactly_one_of_path_and_uri() -> None:
    assert DataSpec.model_validate(
        {"uri": "s3://bkt/a.jsonl", "sha256": "a" * 64, "keepCache": True}
    ).keep_cache
    with pytest.raises(ValidationError, match="exactly one of 'path'"):
        DataSpec.model_validate({"path": "a.jsonl", "uri": "s3://bkt/a.jsonl"})
    with pytest.raises(ValidationError, match="exactly one of 'path'"):
        DataSpec.model_validate({})
    with pytest.raises(ValidationError, match="uri' data only"):
        DataSpec.model_validate({"path": "a.jsonl", "sha256": "a" * 64})
    with pytest.raises(ValidationError, match="sha256"):
        DataSpec.model_validate({"uri": "s3://bkt/a.jsonl", "sha256": "A" * 64})
    with pytest.raises(ValidationError, match="not an S3 URI"):
        DataSpec.model_validate({"uri": "gs://bkt/a.jsonl"})


def test_object_store_spec_wire_names() -> None:
    spec = ObjectStoreClientSpec.model_validate(
        {"endpointURL": "http://minio:9000", "addressingStyle": "path", "caBundlePath": "/etc/ca.pem"}
    )
    assert spec.endpoint_url == "http://minio:9000"
    assert spec.model_dump(by_alias=True, exclude_none=True) == {
        "endpointURL": "http://minio:9000",
        "addressingStyle": "path",
        "caBundlePath": "/etc/ca.pem",
    }


def test_credentials_repr_hides_every_value() -> None:
    creds = Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY, "token-value-123")
    for text in (repr(creds), str(creds), f"{creds}"):
        assert ACCESS_KEY_ID not in text
        assert SECRET_ACCESS_KEY not in text
        assert "token-value-123" not in text


def test_make_client_talks_to_the_endpoint(s3_server: S3Server) -> None:
    s3_server.make_bucket("bkt")
    s3_server.put("bkt", "k/one.txt", b"hello\n")
    spec = ObjectStoreClientSpec.model_validate(s3_server.object_store())
    client = make_client(spec, credentials=Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY))
    assert client.get_object(Bucket="bkt", Key="k/one.txt")["Body"].read() == b"hello\n"


def test_missing_bucket_and_key_are_permanent_and_named(s3_server: S3Server) -> None:
    spec = ObjectStoreClientSpec.model_validate(s3_server.object_store())
    client = make_client(spec, credentials=Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY))
    with pytest.raises(bex.ClientError) as missing_bucket:
        client.head_bucket(Bucket="nope-bucket")
    assert classify(missing_bucket.value) == "permanent"
    s3_server.make_bucket("bkt")
    with pytest.raises(bex.ClientError) as missing_key:
        client.get_object(Bucket="bkt", Key="absent.jsonl")
    assert classify(missing_key.value) == "permanent"
    text = describe(missing_key.value, "s3://bkt/absent.jsonl")
    assert "s3://bkt/absent.jsonl" in text
    assert "no such object" in text


def test_endpoint_down_is_transient_and_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.s3server import free_port

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    spec = ObjectStoreClientSpec(endpoint_url=f"http://127.0.0.1:{free_port()}", addressing_style="path")
    client = make_client(spec, credentials=Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY))
    with pytest.raises(bex.EndpointConnectionError) as info:
        client.head_object(Bucket="bkt", Key="a")
    assert classify(info.value) == "transient"
    assert "endpointURL" in describe(info.value, "s3://bkt/a")


def _client_error(code: str, status: int) -> bex.ClientError:
    return bex.ClientError(
        {
            "Error": {"Code": code, "Message": f"msg with {SECRET_ACCESS_KEY}"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "GetObject",
    )


@pytest.mark.parametrize(
    ("code", "status", "kind", "words"),
    [
        ("NoSuchBucket", 404, "permanent", "bucket does not exist"),
        ("AccessDenied", 403, "permanent", "credentialsSecretRef"),
        ("InvalidAccessKeyId", 403, "permanent", "credentialsSecretRef"),
        ("SignatureDoesNotMatch", 403, "permanent", "credentialsSecretRef"),
        ("SlowDown", 503, "transient", "throttling"),
        ("InternalError", 500, "transient", "retried"),
        ("BadRequest", 400, "permanent", "objectStore"),
    ],
)
def test_classify_and_describe_error_codes(code: str, status: int, kind: str, words: str) -> None:
    exc = _client_error(code, status)
    assert classify(exc) == kind
    text = describe(exc, "s3://bkt/x", secrets=[SECRET_ACCESS_KEY])
    assert words in text
    assert "s3://bkt/x" in text
    assert SECRET_ACCESS_KEY not in text


def test_describe_scrubs_credentials_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-value-42")
    text = describe(RuntimeError("boom env-secret-value-42"), "s3://bkt/x")
    assert "env-secret-value-42" not in text
    assert "<hidden>" in text


def test_call_with_retries_is_bounded_and_stops_on_permanent_errors() -> None:
    calls: list[int] = []
    waits: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _client_error("InternalError", 500)
        return "ok"

    assert (
        call_with_retries(flaky, RetryPolicy(attempts=3, base_delay_seconds=0.5), sleep=waits.append) == "ok"
    )
    assert len(calls) == 3
    assert len(waits) == 2
    assert all(0.25 <= w <= 1.0 for w in waits)

    def missing() -> None:
        calls.append(1)
        raise _client_error("NoSuchKey", 404)

    calls.clear()
    with pytest.raises(bex.ClientError):
        call_with_retries(missing, RetryPolicy(attempts=5), sleep=waits.append)
    assert len(calls) == 1

    def always_down() -> None:
        calls.append(1)
        raise _client_error("ServiceUnavailable", 503)

    calls.clear()
    with pytest.raises(bex.ClientError):
        call_with_retries(always_down, RetryPolicy(attempts=4, base_delay_seconds=0.01), sleep=lambda _: None)
    assert len(calls) == 4
