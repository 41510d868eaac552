"""The pure planner: from a run, its batches and its workloads, decide what to do next (a Plan).

:mod:`.planner` composes the deciders (:mod:`.deciders`); :mod:`.actions` is the plan's vocabulary,
:mod:`.refusals` what a run or batch may not do, :mod:`.status` the status helpers. No kopf, no Kubernetes
client, no clock, no I/O.
"""
