"""The S3 inbox: new objects below a prefix become TrainingBatches, in key order, exactly once.

Three layers, like the rest of the operator: :mod:`.decide` is pure (what to create, the new watermark,
the Events), :mod:`.store` lists the bucket (boto3, nothing else), :mod:`.sync` reads the run's world and
carries a decision out through :mod:`continual_operator.k8s`. Users' documentation: docs/inbox.md.
"""
