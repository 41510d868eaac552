"""Run the operator: kopf with this project's handlers, peering and probes.

``continual-training operator`` calls :func:`run_operator`. Several replicas are safe through kopf's
peering: every replica announces itself in a ``ClusterKopfPeering`` (cluster-wide) or ``KopfPeering`` (per
namespace) object named ``continual-training``, and only the one with the highest priority works while
the others pause. kopf pauses *every* replica when two share the top priority, so each process draws a
random priority unless one is given; when the active replica dies, its entry expires and the next one
takes over. ``--standalone`` skips peering (one replica, or a developer's laptop).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import kopf

from continual_operator.cluster.handlers import OperatorOptions, build_registry
from continual_operator.observe.memory import profiled_from_environment

#: The kopf peering object the chart creates.
PEERING_NAME = "continual-training"
_PRIORITY_RANGE = 2**31 - 1


def run_operator(
    *,
    namespaces: Sequence[str] | None = None,
    standalone: bool = False,
    peering: str = PEERING_NAME,
    metrics_port: int | None = None,
    liveness: str | None = None,
    priority: int | None = None,
    resync_seconds: float = OperatorOptions.resync_seconds,
    status_page_port: int | None = None,
    status_page_host: str = OperatorOptions.status_page_host,
) -> None:
    """Run the operator until it is stopped (SIGINT/SIGTERM).

    ``namespaces``: watch only these (None or empty: the whole cluster). ``liveness``: kopf's liveness
    endpoint, e.g. ``http://0.0.0.0:8081/healthz``. ``priority``: the peering priority (default: random).
    ``status_page_port``: serve the read-only status page there (None: no page), bound to
    ``status_page_host``.
    """
    options = OperatorOptions(
        metrics_port=metrics_port,
        resync_seconds=resync_seconds,
        status_page_port=status_page_port,
        status_page_host=status_page_host,
        namespaces=tuple(namespaces or ()),
    )
    # Opt-in (CONTINUAL_OPERATOR_MEMORY_PROFILE): where the memory goes (docs/observability.md).
    with profiled_from_environment():
        kopf.run(
            registry=build_registry(options),
            clusterwide=not namespaces,
            namespaces=list(namespaces or ()),
            standalone=standalone,
            peering_name=None if standalone else peering,
            priority=priority if priority is not None else 1 + secrets.randbelow(_PRIORITY_RANGE),
            liveness_endpoint=liveness,
        )
