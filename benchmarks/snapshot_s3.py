"""Snapshot upload and restore throughput: ``snapshot create`` vs a plain boto3 ``upload_file`` of the same files.

A moto server runs in its own process on 127.0.0.1 (real HTTP, as MinIO would be). The run folder is made up
to look like a trained LoRA run (a batch-end checkpoint whose ``optimizer.pt`` is twice the adapter, the
exported adapter, ledger, history), with random bytes. For each repeat:

* plain: one process calling ``client.upload_file`` for every file the snapshot holds, in turn (boto3's
  default TransferConfig: multipart above 8 MiB, 10 threads per file);
* create: ``continual_trainer.snapshot.create`` (hash every file, marker, parallel multipart upload with
  per-part SHA-256 checksums, create-only manifest, listing + retention);
* restore: ``continual_trainer.snapshot.restore`` into an empty folder (download, sha256 + size checks,
  fsync, rename into place).

Goal: create MB/s >= 0.9 x plain MB/s. Restore MB/s is printed for reference.

Usage: python benchmarks/snapshot_s3.py [--adapter-mib 32 --repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from s3_download import ACCESS, client, start_moto  # the same moto set-up as the download benchmark

GOAL = 0.9
STEP = 120


def fake_run(root: Path, adapter_mib: int) -> Path:
    """A run folder that ``snapshot.create.select`` accepts: one completed batch ending at ``STEP``."""
    from continual_trainer import checkpoints as ckpts
    from continual_trainer.config import BaseModelSpec, LoraSpec, TrainingSpec
    from continual_trainer.ledger import BatchRecord, Ledger, RunRecord

    lora = LoraSpec()
    ledger = Ledger(root)
    ledger.write_run(RunRecord(base_model=BaseModelSpec(id="org/model"), lora=lora, created_at="t"))
    record = BatchRecord(
        batch_id="b1", sequence=1, data_path="x", data_digest="sha256:0", samples=480, start_step=0,
        target_step=STEP, training=TrainingSpec(), state="completed", created_at="t",
    )  # fmt: skip
    ledger.write_batch(record)
    ckpt = root / "checkpoints" / f"checkpoint-{STEP}"
    ckpt.mkdir(parents=True)
    mib = 1024 * 1024
    sizes = {"adapter_model.safetensors": adapter_mib * mib, "optimizer.pt": 2 * adapter_mib * mib}
    for name in ckpts.REQUIRED_FILES:
        if name != ckpts.MANIFEST:
            (ckpt / name).write_bytes(os.urandom(sizes.get(name, 4096)))
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": STEP}))
    config = {"r": lora.r, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout}
    config |= {"target_modules": lora.target_modules, "bias": lora.bias}
    (ckpt / "adapter_config.json").write_text(json.dumps(config))
    ckpts.write_manifest(ckpt, batch_id="b1", step=STEP)
    adapter = root / "adapters" / f"step-{STEP}"
    adapter.mkdir(parents=True)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        shutil.copy(ckpt / name, adapter / name)
    (root / "adapters" / "latest").symlink_to(adapter.name)
    (root / "history.jsonl").write_bytes(os.urandom(256 * 1024))
    return root


def job(root: Path, url: str) -> Any:
    from continual_trainer.snapshot.job import JobConfig

    store = {"endpointURL": url, "addressingStyle": "path"}
    return JobConfig.model_validate({"runName": "bench", "runDir": str(root), "objectStore": store})


def plain(url: str, root: Path, files: list[str], prefix: str) -> float:
    c = client(url)
    start = time.perf_counter()
    for name in files:
        c.upload_file(str(root / name), "bench", f"{prefix}/{name}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter-mib", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.environ.update(ACCESS)
    from continual_trainer.snapshot.create import CreateOptions, create, select
    from continual_trainer.snapshot.job import Layout
    from continual_trainer.snapshot.restore import RestoreOptions, restore

    proc, url = start_moto()
    work = Path(tempfile.mkdtemp(prefix="snapbench-"))
    try:
        client(url).create_bucket(Bucket="bench")
        root = fake_run(work / "run", args.adapter_mib)
        selection = select(Layout(root), job(root, url).run)
        names = [name for _, name in selection.files]
        mb = sum((root / n).stat().st_size for n in names) / 1e6
        print(
            f"run folder: {len(names)} files, {mb:.1f} MB (adapter {args.adapter_mib} MiB; moto, 127.0.0.1)"
        )
        plain_s, create_s, restore_s = [], [], []
        for r in range(args.repeats):
            plain_s.append(plain(url, root, names, f"plain-{r}"))
            start = time.perf_counter()
            result = create(job(root, url), CreateOptions(destination=f"s3://bench/snap-{r}/"))
            create_s.append(time.perf_counter() - start)
            target = work / f"restored-{r}"
            start = time.perf_counter()
            restore(job(target, url), RestoreOptions(source=result.uri))
            restore_s.append(time.perf_counter() - start)
            shutil.rmtree(target)
        p, c, s = statistics.median(plain_s), statistics.median(create_s), statistics.median(restore_s)
        ratio = (mb / c) / (mb / p)
        print(
            f"plain upload_file {mb / p:7.1f} MB/s | snapshot create {mb / c:7.1f} MB/s (ratio {ratio:.2f}, "
            f"goal >= {GOAL}: {'meets' if ratio >= GOAL else 'MISSES'}) | restore {mb / s:7.1f} MB/s"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
