"""The continual-training operator: reconciles ContinualTrainingRuns and TrainingBatches into workloads.

Packages, from the bottom up (each may import only those below it; import-linter enforces it, and
docs/architecture.md explains it):

* :mod:`~continual_operator.api` -- the custom resources as pydantic models, the single source of truth for
  the CRDs and docs/api.md;
* :mod:`~continual_operator.workloads` -- workload kinds (train, ...): how each is named, built, read back
  and classified; pure;
* :mod:`~continual_operator.planning` -- the pure planner and its deciders: plain data in, a Plan of actions
  (with built manifests) out;
* :mod:`~continual_operator.inbox` and :mod:`~continual_operator.observe` -- the S3 inbox's rules and store;
  metrics, learning curves, reports and the status page;
* :mod:`~continual_operator.cluster` and :mod:`~continual_operator.local` -- the two executors: the kopf
  operator on a cluster, and local mode on one machine (each with its status page source);
* :mod:`~continual_operator.cli` -- ``continual-training``.
"""
