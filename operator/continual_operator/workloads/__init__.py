"""Workload kinds: what the operator runs for a run on its volume, one small module per kind.

``train`` (:mod:`.train`, one trainer attempt of one batch) and the artifact kinds ``snapshot``,
``restore`` and ``consolidate`` (:mod:`.snapshot`, :mod:`.restore`, :mod:`.consolidate`, sharing
:mod:`.artifact`). Pure: no kopf, no Kubernetes client, no I/O. See :mod:`.kinds` for the protocol and
:mod:`.registry` for the registry.
"""
