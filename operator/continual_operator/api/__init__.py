"""The operator's API: ContinualTrainingRun and TrainingBatch (group continual.dev, version v1alpha1).

These pydantic models are the single source of truth: the CRDs in ``crds/`` are generated from them
(:mod:`continual_operator.api.crdgen`), their field descriptions become ``kubectl explain`` text, and handlers
parse every object with them before anything else looks at it.
"""

from continual_operator.api.batch import (
    BATCH_INFO,
    BatchData,
    BatchPhase,
    TrainingBatch,
    TrainingBatchSpec,
    TrainingBatchStatus,
)
from continual_operator.api.inbox import InboxSpec, InboxStatus
from continual_operator.api.meta import API_VERSION, GROUP, VERSION, Condition, ObjectMeta, ResourceInfo
from continual_operator.api.run import (
    DEFAULT_IMAGE,
    RUN_INFO,
    CABundleSecretRef,
    ClaimTemplate,
    ContinualTrainingRun,
    ContinualTrainingRunSpec,
    ContinualTrainingRunStatus,
    CredentialsSecretRef,
    FailurePolicy,
    ObjectStoreSpec,
    ProgressReporting,
    ResourcesSpec,
    RunBaseModelSpec,
    RunPhase,
    SchedulingSpec,
    StorageSpec,
)

#: Every kind the operator serves, in CRD generation order.
RESOURCES: tuple[ResourceInfo, ...] = (RUN_INFO, BATCH_INFO)

__all__ = [
    "API_VERSION",
    "BATCH_INFO",
    "DEFAULT_IMAGE",
    "GROUP",
    "RESOURCES",
    "RUN_INFO",
    "VERSION",
    "BatchData",
    "BatchPhase",
    "CABundleSecretRef",
    "ClaimTemplate",
    "Condition",
    "ContinualTrainingRun",
    "ContinualTrainingRunSpec",
    "ContinualTrainingRunStatus",
    "CredentialsSecretRef",
    "FailurePolicy",
    "InboxSpec",
    "InboxStatus",
    "ObjectMeta",
    "ObjectStoreSpec",
    "ProgressReporting",
    "ResourceInfo",
    "ResourcesSpec",
    "RunBaseModelSpec",
    "RunPhase",
    "SchedulingSpec",
    "StorageSpec",
    "TrainingBatch",
    "TrainingBatchSpec",
    "TrainingBatchStatus",
]
