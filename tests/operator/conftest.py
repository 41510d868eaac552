"""Fixtures of the kmock tests: the emulated API server's world (a file with extra resources overrides it)."""

from __future__ import annotations

import kmock
import pytest
from kube_world import KubeWorld


@pytest.fixture
def world(kmock: kmock.KubernetesEmulator) -> KubeWorld:
    return KubeWorld(kmock)
