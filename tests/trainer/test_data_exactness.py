"""The new reading paths train exactly: gzip, a BOM, a symlink inside the volume and a pre-cut long sample.

A folder batch on a volume holding the demo batch gzip-compressed with a BOM (through a symlink that stays
inside) plus a 300 KB line (cut before tokenizing), trained by the trainer in its own process, ends bit for
bit (max abs diff 0.0) equal to the uninterrupted reference run over the same samples read from plain
files -- so these paths read exactly the samples the plain ones do, and train them exactly.
"""

from __future__ import annotations

import gzip
import json

import pytest
from tests.trainer.helpers import DEMO, adapter_weights, make_config, max_abs_diff, run_trainer

from continual_trainer.reference import run_uninterrupted

pytestmark = pytest.mark.slow
ONE_EPOCH = {"epochsPerBatch": 1}


def test_gzip_bom_symlink_and_pre_cut_paths_train_exactly(tiny_model, tmp_path):
    demo = (DEMO / "batch-001.jsonl").read_bytes()
    long_line = json.dumps({"text": "a very long sample " * 16_000}).encode() + b"\n"
    volume = tmp_path / "volume"
    plain = volume / "plain"
    plain.mkdir(parents=True)
    (plain / "1.jsonl").write_bytes(demo)
    (plain / "2.jsonl").write_bytes(long_line)
    store = volume / "store"
    store.mkdir()
    (store / "demo.jsonl.gz").write_bytes(gzip.compress(b"\xef\xbb\xbf" + demo))
    fancy = volume / "fancy"
    fancy.mkdir()
    (fancy / "1.jsonl.gz").symlink_to(store / "demo.jsonl.gz")
    (fancy / "2.txt.gz").write_bytes(gzip.compress(b"\xef\xbb\xbf" + b"a very long sample " * 16_000))

    out = run_trainer(
        make_config(volume / "run", tiny_model, "b1", fancy, training=ONE_EPOCH, data_root=volume)
    )
    assert out.code == 0, out.stderr[-3000:]
    assert out.result is not None
    assert out.result["truncated"]["samples"] == 1
    assert out.result["truncated"]["first"] == "2.txt.gz:1"
    assert out.result["truncated"]["charactersNotTokenized"] > 250_000

    reference = tmp_path / "reference"
    ref = run_uninterrupted(
        [make_config(reference, tiny_model, "b1", plain, training=ONE_EPOCH, data_root=volume)], reference
    )
    assert ref.final_step == out.result["endStep"]
    final = f"checkpoint-{ref.final_step}"
    trained = adapter_weights(volume / "run" / "checkpoints" / final)
    assert max_abs_diff(trained, adapter_weights(reference / "checkpoints" / final)) == 0.0
