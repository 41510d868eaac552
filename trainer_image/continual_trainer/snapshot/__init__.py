"""Verified snapshots of a run's volume in an S3 bucket, and restore from them (no torch here).

A snapshot is everything needed to continue a run exactly where its last completed batch ended: that
batch's end checkpoint, the ledger (with a run record), the exported adapter ``adapters/latest`` points at,
``history.jsonl``, and the inbox watermark the operator hands over (``--inbox-state``). It lives below
``s3://bucket/prefix/<snapshotId>/`` and counts only once its ``manifest.json`` (the sha256 and size of
every file) exists; the manifest is written last, create-only, so an interrupted upload never looks
complete (see docs/snapshots.md).

* :mod:`.job`       the artifact job's view of the trainer config, and the run folder's layout;
* :mod:`.manifest`  snapshot ids, the manifest and the result records;
* :mod:`.retention` which committed snapshots retention deletes, which incomplete ones are swept (pure);
* :mod:`.store`     the S3 side: multipart transfers, the create-only commit, listing, idempotent deletes;
* :mod:`.create`    ``create``: select, hash, upload, commit, then retention and sweeping;
* :mod:`.restore`   ``restore``: download into a staging folder, verify, then move into place;
* ``python -m continual_trainer.snapshot create|restore``: the job's command line (:mod:`.__main__`).
"""
