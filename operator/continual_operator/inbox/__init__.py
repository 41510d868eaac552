"""The S3 inbox: new objects below a prefix become TrainingBatches, in key order, exactly once.

Layered like the rest of the operator: :mod:`.decide` is pure (what to create, the new watermark, the
Events), :mod:`.store` lists the bucket (boto3, nothing else), :mod:`.local` drives them in local mode, and
:mod:`continual_operator.cluster.inbox_sync` reads a run's world on a cluster and carries a decision out.
Users' documentation: docs/inbox.md.
"""
