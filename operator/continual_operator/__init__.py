"""The continual-training operator: reconciles ContinualTrainingRuns and TrainingBatches into trainer Jobs.

Layers (see docs and the import-linter contracts):

* :mod:`continual_operator.api` -- the custom resources as pydantic models, the single source of truth for
  the CRDs (:mod:`continual_operator.crdgen` generates ``crds/*.yaml`` from them);
* :mod:`continual_operator.planner` -- the pure decision logic: plain data in, a :class:`~continual_operator.
  actions.Plan` out; it imports neither kopf nor the Kubernetes client;
* :mod:`continual_operator.resources` -- pure builders of the Kubernetes objects a run needs;
* the kopf handlers and the single Kubernetes I/O module carry out the plans.
"""
