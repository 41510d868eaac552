"""Observability that both executors share: Prometheus metrics (:mod:`.metrics`), learning curves read
from a volume (:mod:`.curve`), reports drawn from them (:mod:`.report`) and the read-only status page
(:mod:`.page`; each executor gives it a source: :mod:`continual_operator.local.page`,
:mod:`continual_operator.cluster.page`)."""
