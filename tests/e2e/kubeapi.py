"""Plain-JSON access to the Kubernetes API for the harness (the pod runner, the CRD installer).

The harness works on objects as the API serves them: camelCase dicts, exactly what a kubelet reads and
what a manifest says. The `kubernetes` client's typed models (pydantic since v35, with strict
validation) are a moving target between client versions and would have to be converted back anyway,
so `RawApi` borrows only the client's transport (TLS, client certificates, bearer tokens from the
kubeconfig) via `ApiClient.param_serialize` + `call_api`, and sends and receives JSON.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import kubernetes
import urllib3

JSON = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class ApiError(RuntimeError):
    """A non-2xx answer; `status` is the HTTP code and `body` the decoded Status (if JSON)."""

    def __init__(self, method: str, path: str, status: int, body: JSON | str) -> None:
        message = body.get("message", body) if isinstance(body, dict) else body
        super().__init__(f"{method} {path}: {status} {message}")
        self.status = status
        self.body = body


class RawApi:
    """JSON requests to the API server with the credentials of a `kubernetes.client.ApiClient`."""

    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self.api_client = api_client
        self._watches: set[Any] = set()
        self._closed: set[Any] = set()
        self._lock = threading.Lock()

    def close_watches(self) -> None:
        """End every watch in progress now (their iterators stop), e.g. to stop a watching thread."""
        with self._lock:
            watches = list(self._watches)
            self._closed.update(watches)
        for response in watches:
            response.shutdown()

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float | tuple[float, float] = 30,
    ) -> kubernetes.client.rest.RESTResponse:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        method, url, headers, body, _ = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        return self.api_client.call_api(
            method, url, header_params=headers, body=body, _request_timeout=timeout
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> JSON:
        """Send one request and return the decoded answer; raise `ApiError` on a non-2xx status."""
        response = self._send(method, path, body=body, query=query, content_type=content_type)
        data = response.read()
        text = data.decode() if isinstance(data, bytes) else str(data)
        try:
            decoded: JSON | str = json.loads(text) if text else {}
        except json.JSONDecodeError:
            decoded = text
        if not 200 <= response.status <= 299:
            raise ApiError(method, path, response.status, decoded)
        return decoded if isinstance(decoded, dict) else {"raw": decoded}

    def get(self, path: str, query: dict[str, str] | None = None) -> JSON:
        return self.request("GET", path, query=query)

    def create(self, path: str, body: JSON) -> JSON:
        return self.request("POST", path, body=body)

    def patch(self, path: str, body: JSON, content_type: str = MERGE_PATCH) -> JSON:
        return self.request("PATCH", path, body=body, content_type=content_type)

    def delete(self, path: str, body: JSON | None = None) -> JSON:
        return self.request("DELETE", path, body=body)

    def watch(self, path: str, query: dict[str, str], timeout_seconds: int = 30) -> Iterator[JSON]:
        """Stream watch events ({"type", "object"}) until the server closes the watch.

        The server ends the watch after `timeout_seconds`; the read timeout is a little longer so that
        a dead connection cannot hang the caller.
        """
        query = {**query, "watch": "true", "timeoutSeconds": str(timeout_seconds)}
        response = self._send("GET", path, query=query, timeout=(5, timeout_seconds + 15))
        raw = response.response
        with self._lock:
            self._watches.add(raw)
        try:
            if response.status != 200:
                raise ApiError("WATCH", path, response.status, raw.read().decode(errors="replace"))
            buffer = b""
            for chunk in raw.stream(amt=65536, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        except urllib3.exceptions.HTTPError:
            if raw in self._closed:  # ended by close_watches(): a normal end
                return
            raise
        finally:
            with self._lock:
                self._watches.discard(raw)
                self._closed.discard(raw)
            raw.release_conn()


def is_status(error: BaseException, *statuses: int) -> bool:
    """Whether `error` is an `ApiError` with one of these HTTP statuses."""
    return isinstance(error, ApiError) and error.status in statuses
