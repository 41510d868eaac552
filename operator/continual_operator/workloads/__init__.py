"""Workload kinds: what the operator runs for a run (a trainer attempt today), one small module per kind.

Pure: no kopf, no Kubernetes client, no I/O. See :mod:`.kinds` for the protocol and the registry.
"""
