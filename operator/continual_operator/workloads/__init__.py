"""Workload kinds: how each kind of workload the operator runs for a run is named, built and read back."""
