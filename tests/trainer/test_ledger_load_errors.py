"""Base-model load errors say what is wrong and are classified for retries.

A missing ``baseModel.path`` says "does not exist" (not "Repo id must be in the form ..."); a hub that cannot
be reached (offline with an uncached id, connection errors, 5xx) is transient (75); an unknown repo id or
revision is permanent (64). The hub is a local HTTP server answering as the Hugging Face Hub does.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.trainer.helpers import DEMO_BATCHES, make_config, run_trainer

(B1, P1), _, _ = DEMO_BATCHES


def hub_config(tmp_path: Path, tiny_model: Path, model_id: str):
    config = make_config(tmp_path / "run", tiny_model, B1, P1)
    return config.model_copy(update={"base_model": config.base_model.model_validate({"id": model_id})})


def test_a_missing_base_model_path_says_it_does_not_exist(tiny_model, tmp_path):
    out = run_trainer(make_config(tmp_path / "run", tmp_path / "models" / "nope", B1, P1))
    assert out.code == 64, out.stderr[-3000:]
    assert out.result is not None
    message = out.result["message"]
    assert f"baseModel.path: '{tmp_path / 'models' / 'nope'}' does not exist" in message
    assert "Repo id" not in message
    assert not (tmp_path / "run" / "ledger").exists()


def test_an_uncached_hub_model_while_offline_is_transient(tiny_model, tmp_path):
    out = run_trainer(hub_config(tmp_path, tiny_model, "someorg/not-cached-anywhere"))
    assert out.code == 75, out.stderr[-3000:]
    assert out.result is not None
    assert out.result["reason"] == "HubUnreachable"
    assert (
        "could not reach the Hugging Face Hub to get 'someorg/not-cached-anywhere'" in out.result["message"]
    )
    assert "baseModel.path" in out.result["message"]  # the way around it
    assert not (tmp_path / "run" / "ledger").exists()


class FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers like the hub: 404 with X-Error-Code for unknown repos/revisions, a 5xx otherwise."""

    def _answer(self) -> None:
        if "/org/missing" in self.path:
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
        elif "/org/model" in self.path:
            self.send_response(404)
            self.send_header("X-Error-Code", "RevisionNotFound")
        else:
            self.send_response(507)  # a 5xx the hub client does not retry itself (503 waits ~25 s)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = _answer  # noqa: N815 - the names http.server dispatches to

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        del format, args


@pytest.fixture
def fake_hub() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


CLASSIFY = """
import json, sys
from continual_trainer.config import BaseModelSpec
from continual_trainer.exitcodes import TrainerError
from continual_trainer.model import load_tokenizer
for spec in json.loads(sys.argv[1]):
    try:
        load_tokenizer(BaseModelSpec.model_validate(spec))
        print(json.dumps({"spec": spec, "code": 0}))
    except TrainerError as exc:
        print(json.dumps({"spec": spec, "code": int(exc.exit_code), "reason": exc.reason, "message": exc.message}))
"""


def test_hub_answers_are_classified(fake_hub, tmp_path):
    specs = [
        {"id": "org/missing"},
        {"id": "org/model", "revision": "no-such-branch"},
        {"id": "org/overloaded"},
    ]
    env = {
        "PATH": "/usr/bin:/bin",
        "HF_ENDPOINT": fake_hub,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", CLASSIFY, json.dumps(specs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    by_id = {(r["spec"]["id"], r["spec"].get("revision")): r for r in results}
    missing = by_id[("org/missing", None)]
    assert missing["code"] == 64
    assert "baseModel.id: 'org/missing' is not a model on the hub" in missing["message"]
    revision = by_id[("org/model", "no-such-branch")]
    assert revision["code"] == 64
    assert "baseModel.revision: 'no-such-branch' is not a revision of 'org/model'" in revision["message"]
    overloaded = by_id[("org/overloaded", None)]
    assert (overloaded["code"], overloaded["reason"]) == (75, "HubUnreachable")
