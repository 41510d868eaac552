"""Building blocks shared by both custom resources: object metadata, conditions, small Kubernetes types.

Spec models reuse the trainer contract's :class:`~continual_trainer.config.Model` (camelCase aliases,
unknown keys rejected, frozen). Status models differ on purpose: they ignore unknown keys, because a status
is written by several parties (the operator, the trainer inside the Job, maybe a newer operator version
during an upgrade) and a field one of them does not know must not make the whole object unreadable.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from continual_trainer.config import Model

GROUP = "continual.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

#: An RFC 3339 timestamp kept as the string the API server stores (no time-zone round trips).
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]

#: ``x-kubernetes-preserve-unknown-fields`` is what crdgen emits for these: free-form Kubernetes objects
#: (affinity, valueFrom) that the operator passes through to the pod unchanged.
FreeForm = dict[str, Any]


class StatusModel(BaseModel):
    """Base for status and metadata: camelCase, frozen, unknown keys ignored (see the module docstring)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


class ObjectMeta(StatusModel):
    """The part of Kubernetes object metadata the operator reads."""

    name: str = Field(description="Object name.")
    namespace: str | None = Field(default=None, description="Namespace.")
    uid: str | None = Field(default=None, description="Unique id (owner references need it).")
    generation: int | None = Field(default=None, description="Incremented by the API server on spec changes.")
    resource_version: str | None = Field(default=None, description="Optimistic-concurrency token.")
    creation_timestamp: dt.datetime | None = Field(default=None, description="When the object was created.")
    deletion_timestamp: dt.datetime | None = Field(default=None, description="Set once deletion started.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations.")


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(StatusModel):
    """One aspect of the object's state, in the shape of Kubernetes' ``metav1.Condition``."""

    type: str = Field(description="The aspect: Ready, Training, Degraded or Suspended.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="A CamelCase word saying why (for machines).")
    message: str = Field(default="", description="What happened and, for problems, what to do (for people).")
    last_transition_time: Timestamp | None = Field(
        default=None, description="When status last changed (not when reason or message did)."
    )
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this condition was computed from."
    )


class LocalObjectReference(Model):
    """A reference to an object in the same namespace."""

    name: str = Field(min_length=1, description="The object's name.")


class SecretKeyRef(Model):
    """One key of a Secret in the run's namespace."""

    name: str = Field(min_length=1, description="The Secret's name.")
    key: str = Field(min_length=1, description="The key inside the Secret.")


class EnvVar(Model):
    """An environment variable of the trainer container (as in a pod spec)."""

    name: str = Field(min_length=1, description="Variable name.")
    value: str | None = Field(default=None, description="A literal value.")
    value_from: FreeForm | None = Field(
        default=None,
        description="A source for the value (secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef), "
        "passed to the pod unchanged.",
    )


class ConfigMapEnvSource(Model):
    """All keys of a ConfigMap as environment variables."""

    name: str = Field(min_length=1, description="The ConfigMap's name.")
    optional: bool | None = Field(default=None, description="Start even if the ConfigMap is missing.")


class SecretEnvSource(Model):
    """All keys of a Secret as environment variables."""

    name: str = Field(min_length=1, description="The Secret's name.")
    optional: bool | None = Field(default=None, description="Start even if the Secret is missing.")


class EnvFromSource(Model):
    """A set of environment variables from a ConfigMap or a Secret (as in a pod spec)."""

    prefix: str | None = Field(default=None, description="Prepended to every variable name.")
    config_map_ref: ConfigMapEnvSource | None = Field(
        default=None, description="Take every key of this ConfigMap."
    )
    secret_ref: SecretEnvSource | None = Field(default=None, description="Take every key of this Secret.")


class Toleration(Model):
    """Lets the trainer pod run on nodes with a matching taint (e.g. dedicated GPU nodes)."""

    key: str | None = Field(
        default=None, description="The taint key (empty with operator Exists: all taints)."
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (default)."
    )
    value: str | None = Field(default=None, description="The taint value (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="The taint effect to tolerate (empty: all)."
    )
    toleration_seconds: int | None = Field(
        default=None, description="NoExecute only: how long the pod stays bound after the taint appears."
    )


@dataclass(frozen=True)
class PrinterColumn:
    """One ``kubectl get`` column."""

    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: str
    description: str
    priority: int = 0


@dataclass(frozen=True)
class ImmutableField:
    """A spec field that cannot change after creation (a CEL transition rule in the CRD)."""

    name: str
    message: str


@dataclass(frozen=True)
class ResourceInfo:
    """What a CRD says about a kind besides its schema (crdgen turns it into the manifest)."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    model: type[BaseModel]
    spec_model: type[BaseModel]
    status_model: type[BaseModel]
    printer_columns: tuple[PrinterColumn, ...]
    immutable: tuple[ImmutableField, ...] = ()
    categories: tuple[str, ...] = ("continual",)
