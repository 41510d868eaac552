"""The operator on a real control plane: the issue's end-to-end scenarios, trainer pods included.

The operator runs as `continual-training operator --standalone --namespace <ns>` with the chart's RBAC
(see `operator_process.py`); the pod runner plays kubelet for its Jobs and runs the real trainer as uid
1000 on the claim's host folder; the trainer reports progress into the run's status through the per-run
ServiceAccount the operator creates, whose Role allows patching that one object's status only.

Every trainer process costs a few seconds on two cores, so scenarios that can share a run do:
1+3 (three batches in order, live progress, an operator SIGKILLed and restarted mid-batch), 2+6+suspend
(a trainer SIGKILLed mid-batch and retried, a suspend mid-batch and a resume, weights identical to an
uninterrupted run, then the run deleted and its claim kept). 4 and 5 are about invalid manifests.
"""

from __future__ import annotations

import datetime as dt
import re
import signal
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from continual_operator.api import ContinualTrainingRun, TrainingBatch
from continual_operator.naming import claim_name
from continual_operator.workloads.resources import DATA_MOUNT, config_in_pod_annotation, get_trainer_config
from continual_trainer.config import TrainerConfig, parse_config

from .controlplane import ControlPlane
from .kubeapi import JSON, ApiError
from .operator_world import (
    DEMO_BATCHES,
    DEMO_STEPS,
    ActiveJobs,
    Recorded,
    World,
    batch_manifest,
    condition,
    job_finished,
    prepare_volume,
    pvc_manifest,
    run_manifest,
    signal_pending,
    status,
)

pytestmark = pytest.mark.e2e

#: A trainer process (torch import, model load, 6 steps, checkpoints) takes 5-10 s on two busy cores.
TRAINING_TIMEOUT = 180


def job_name(run: str, batch: str, attempt: int = 1) -> str:
    return f"{run}-{batch}-a{attempt}"


def seconds(timestamp: str) -> float:
    """An API timestamp (RFC 3339, whole seconds) as seconds since the epoch."""
    return dt.datetime.fromisoformat(timestamp).timestamp()


def created_jobs(events: list[Recorded]) -> Counter[str]:
    """How often each Job name was created (a LISTED Job existed when recording began)."""
    return Counter(e.name for e in events if e.type in {"ADDED", "LISTED"})


def batch_events(world: World) -> dict[str, list[str]]:
    """Event reasons per TrainingBatch, oldest first."""
    reasons: dict[str, list[str]] = {}
    for event in sorted(world.events(), key=lambda e: (e.get("firstTimestamp") or "", e["metadata"]["name"])):
        if event["involvedObject"]["kind"] == "TrainingBatch":
            reasons.setdefault(event["involvedObject"]["name"], []).append(event["reason"])
    return reasons


# --- 1 + 3: three batches, one Job at a time, live progress, an operator restart --------------------


def test_batches_train_in_order_with_live_progress_across_an_operator_restart(
    world: World, tiny_model: Path
) -> None:
    run, claim = "quickstart", "shared-volume"
    world.create(pvc_manifest(claim))
    prepare_volume(world.pod_runner.claim_path(claim), tiny_model, f"runs/{run}")

    # Every Job event (how many were ever active at once, which names were created) and every step the
    # trainer patched into the run's status, with whether that step's Job had finished at that moment.
    active = ActiveJobs()
    jobs = world.record(world.jobs_path, active)
    progress: list[tuple[int, str, bool]] = []

    def on_run_event(record: Recorded) -> None:
        step, job = status(record.object).get("globalStep"), status(record.object).get("currentJob")
        if step is None or job is None or (progress and progress[-1][:2] == (step, job)):
            return
        try:
            finished = job_finished(world.api.get(f"{world.jobs_path}/{job}"))
        except ApiError as error:
            if error.status != 404:
                raise
            finished = True
        progress.append((step, job, finished))

    world.record(world.runs_path, on_run_event)

    with world.explained():
        world.create(run_manifest(run, {"existingClaim": claim, "subPath": f"runs/{run}"}))
        for name, data_file in DEMO_BATCHES:
            world.create(batch_manifest(name, run, data_file))

        # Scenario 3: the operator dies (SIGKILL, no cleanup) while batch 2's Job trains; a new one takes
        # over. Its startup resumes every run; the Job's deterministic name makes a second create a 409.
        second = job_name(run, "batch-002")
        world.wait_trainer_event(
            second, lambda e: e["kind"] == "batch-started", "batch started", TRAINING_TIMEOUT
        )
        world.operator.kill()
        assert not job_finished(world.api.get(f"{world.jobs_path}/{second}")), "the Job ended too early"
        world.operator.start()

        final = world.wait_run(
            run,
            lambda r: status(r).get("phase") == "Idle" and status(r).get("batchesCompleted") == 3,
            "Idle with 3 batches completed",
            timeout=TRAINING_TIMEOUT * 2,
        )

        # One Job per batch, created once each, never two at the same time.
        assert created_jobs(jobs.snapshot()) == Counter({job_name(run, b): 1 for b, _ in DEMO_BATCHES})
        assert sorted(j["metadata"]["name"] for j in world.jobs(run)) == [
            job_name(run, b) for b, _ in DEMO_BATCHES
        ]
        assert active.most == 1, f"Jobs active at the same time: {active.overlaps}"
        for batch, _ in DEMO_BATCHES:
            pods = {p.pod for p in world.pod_runner.processes(job_name(run, batch))}
            assert len(pods) == 1, f"{batch}: pods {pods}"

        # Contiguous step ranges, recorded from the trainers' termination messages.
        for batch, (start, end) in DEMO_STEPS.items():
            got = status(world.batch(batch))
            assert got["phase"] == "Succeeded", got
            assert (got["startStep"], got["endStep"], got["attempts"]) == (start, end, 1), got
            assert got["job"] == job_name(run, batch)
            assert got["checkpoint"].endswith(f"checkpoint-{end}")
            assert got["samples"] > 0
            assert got["tokens"] > 0

        # globalStep moved inside every batch while its Job was still running: the trainer pod patched
        # the run's status through its own ServiceAccount (the operator writes only batch-end steps).
        for batch, (start, end) in DEMO_STEPS.items():
            inside = [p for p in progress if start < p[0] < end and p[1] == job_name(run, batch)]
            assert any(not finished for _, _, finished in inside), f"{batch}: {progress}"

        final_status = status(final)
        assert final_status["globalStep"] == 18
        assert final_status["completedStep"] == 18
        assert final_status["latestCheckpoint"] == "checkpoint-18"
        assert final_status["batchesQueued"] == 0
        assert final_status["batchesFailed"] == 0
        assert final_status["observedGeneration"] == final["metadata"]["generation"]
        assert condition(final, "Ready")["status"] == "True"
        assert condition(final, "Degraded")["status"] == "False"
        assert condition(final, "Training")["status"] == "False"

        # A plan posts its Events last, after the status patches: wait for the last one. One Event per
        # batch, at its end, naming its Job and attempt (none when it starts: the status says Training).
        reasons = world.wait(
            lambda: (events := batch_events(world)).get("batch-003") == ["Succeeded"] and events,
            "the Events of batch-003",
        )
        for batch, _ in DEMO_BATCHES:
            assert reasons.get(batch) == ["Succeeded"], reasons

        table = world.control_plane.kubectl("get", "ctr,tbatch", "-n", world.namespace).stdout
        header_run, row_run = table.splitlines()[:2]
        assert header_run.split() == ["NAME", "READY", "PHASE", "STEP", "BATCHES", "LOSS", "AGE"], table
        assert row_run.split()[:5] == [
            f"continualtrainingrun.continual.dev/{run}",
            "True",
            "Idle",
            "18",
            "3",
        ], table
        for batch, (start, end) in DEMO_STEPS.items():
            row = next(
                line.split()
                for line in table.splitlines()
                if line.startswith(f"trainingbatch.continual.dev/{batch} ")
            )
            assert row[1:5] == [run, "Succeeded", str(start), str(end)], table

        # The operator did all this as its chart's ServiceAccount: not one request was refused.
        assert "Forbidden" not in world.operator.log()
        assert world.operator.starts == 2

        # A real scrape of the (second) operator's /metrics: the run's training series, from its statuses.
        scraped = scrape_metrics(world.operator.metrics_port)
        labels = (("namespace", world.namespace), ("run", run))
        assert scraped[("continual_run_global_step", labels)] == 18
        assert scraped[("continual_run_trained_samples_total", labels)] == sum(
            status(world.batch(b))["samples"] for b, _ in DEMO_BATCHES
        )
        assert scraped[("continual_run_trained_tokens_total", labels)] > 0
        assert scraped[("continual_run_batches", (labels[0], ("phase", "Succeeded"), labels[1]))] == 3
        assert scraped[("continual_run_oldest_queued_batch_age_seconds", labels)] == 0
        assert scraped[("continual_run_degraded", labels)] == 0
        assert ("continual_run_seconds_since_last_checkpoint", labels) in scraped
        # this process saw batch-002 and batch-003 succeed, and batch-003 leave the queue
        assert scraped[("continual_batch_duration_seconds_count", labels)] == 2
        assert scraped[("continual_batch_queue_wait_seconds_count", labels)] == 1


# --- 2 + 6 + suspend: a killed trainer, a suspended run, exact weights, a deleted run ----------------


def scrape_metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics of the operator: ``(sample, sorted labels) -> value``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def trainer_configs(world: World, jobs: list[Recorded], run: str) -> dict[str, TrainerConfig]:
    """The trainer config each batch's latest attempt got (from its Job's pod template, as created),
    checked to be exactly what `get_trainer_config` makes of the run and the batch as they are stored."""
    stored_run = ContinualTrainingRun.model_validate(world.run(run))
    got: dict[str, TrainerConfig] = {}
    for record in jobs:
        annotations = record.object["metadata"].get("annotations") or {}
        if record.type == "ADDED" and annotations.get("continual.dev/run") == run:
            text = config_in_pod_annotation(record.object)
            assert text is not None, f"{record.object['metadata']['name']} carries no config"
            got[annotations["continual.dev/batch"]] = parse_config(text)
    for batch, config in got.items():
        stored_batch = TrainingBatch.model_validate(world.batch(batch))
        assert config == get_trainer_config(stored_run, stored_batch), batch
        assert (config.lora, config.training) == (stored_run.spec.lora, stored_run.spec.training)
    return got


def on_this_machine(config: TrainerConfig, *, volume: Path, run_dir: Path) -> TrainerConfig:
    """A pod's trainer config with the volume's paths mapped to the claim's host folder and progress
    kept local: everything that decides the weights (seed, LoRA, training, data) unchanged."""
    data = config.model_dump(mode="json", by_alias=True)

    def host(pod_path: str) -> str:
        return str(volume / Path(pod_path).relative_to(DATA_MOUNT))

    data["runDir"] = str(run_dir)
    data["dataRoot"] = host(data["dataRoot"])
    data["baseModel"]["path"] = host(data["baseModel"]["path"])
    data["batch"]["data"]["path"] = host(data["batch"]["data"]["path"])
    data["progress"]["kubernetes"] = None
    data["terminationMessagePath"] = str(run_dir.parent / f"result-{config.batch.id}.json")
    return TrainerConfig.model_validate(data)


def is_stopped(pid: int) -> bool:
    """Whether process `pid` is stopped (state T in /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def test_killed_and_suspended_trainers_resume_to_the_weights_of_an_uninterrupted_run(
    world: World, tiny_model: Path, tmp_path: Path
) -> None:
    run = "resumed"
    claim = claim_name(run)
    volume = world.pod_runner.claim_path(claim)
    prepare_volume(volume, tiny_model, f"runs/{run}")
    active = ActiveJobs()
    jobs = world.record(world.jobs_path, active)
    config_maps = world.record(world.config_maps_path)

    with world.explained():
        # The claim comes from the template (the operator creates it before the first Job); the model and
        # the data were put on its host folder beforehand, as a data-loading step would.
        storage = {"claimTemplate": {"size": "1Gi"}, "retainOnDelete": True, "subPath": f"runs/{run}"}
        # saveSteps 2 instead of the demo's 4: a checkpoint at step 8, early inside batch 2 (6..12).
        # The trainer freezes itself (SIGSTOP) at the end of step 9, inside batch 2: the test then kills a
        # process that is known to be mid-batch, with no race against the trainer finishing the batch.
        freeze = [{"name": "CONTINUAL_TRAINER_FAILPOINTS", "value": "step-end@9=stop"}]
        world.create(run_manifest(run, storage, training={"saveSteps": 2}, env=freeze))
        for name, data_file in DEMO_BATCHES:
            world.create(batch_manifest(name, run, data_file))

        # Scenario 2: SIGKILL the trainer of batch 2 once it has checkpointed inside the batch (step 8).
        killed_job = job_name(run, "batch-002")
        killed, _ = world.wait_trainer_event(
            killed_job,
            lambda e: e["kind"] == "checkpoint" and e["globalStep"] == 8,
            "checkpoint-8",
            TRAINING_TIMEOUT,
        )
        world.wait(lambda: is_stopped(killed.pid), "the trainer frozen at step 9")
        world.pod_runner.kill(killed.pod)
        failed_pod = world.wait(
            lambda: next(
                (
                    p
                    for p in world.api.get(world.pods_path)["items"]
                    if p["metadata"]["name"] == killed.pod and status(p).get("phase") == "Failed"
                ),
                None,
            ),
            "the killed pod Failed",
        )
        assert status(failed_pod)["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
        # The operator counts the failure, backs off (1 s) and starts attempt 2, which resumes from the
        # checkpoint the killed attempt left inside the batch rather than from the batch's start.
        retried, resumed = world.wait_trainer_event(
            job_name(run, "batch-002", 2), lambda e: e["kind"] == "batch-started", "attempt 2 started"
        )
        assert (resumed["globalStep"], resumed["latestCheckpoint"]) == (8, "checkpoint-8"), resumed
        # attempt 2 passes step 9 too, and freezes there: let it go on
        world.wait(lambda: is_stopped(retried.pid), "attempt 2 frozen at step 9")
        world.pod_runner.kill(retried.pod, signal.SIGCONT)
        retrying = [
            e
            for e in world.events()
            if e["reason"] == "Retrying" and e["involvedObject"]["name"] == "batch-002"
        ]
        assert len(retrying) == 1 and retrying[0]["type"] == "Warning", retrying
        assert "exit code 137" in retrying[0]["message"] and "retry 1 of 2" in retrying[0]["message"]
        # The back-off, in the API server's timestamps (whole seconds, one clock): the retry was scheduled
        # at least failurePolicy.backoffSeconds (1 s) after the Job failed, and attempt 2 not created before.
        first = world.api.get(f"{world.jobs_path}/{killed_job}")
        failed_at = next(
            c["lastTransitionTime"] for c in status(first)["conditions"] if c["type"] == "Failed"
        )
        retry_at = re.search(r"retry 1 of 2 at (\S+Z)", retrying[0]["message"])
        assert retry_at, retrying[0]["message"]
        second = world.api.get(f"{world.jobs_path}/{job_name(run, 'batch-002', 2)}")
        assert seconds(retry_at[1]) >= seconds(failed_at) + 1
        assert seconds(second["metadata"]["creationTimestamp"]) >= seconds(retry_at[1])

        # Suspend: freeze the trainer of batch 3 inside the batch (SIGSTOP, so that the test, not the
        # scheduler, decides where the SIGTERM lands), suspend the run, and let the trainer go on once the
        # SIGTERM of the foreground deletion of its Job is waiting for it. It checkpoints and exits 85.
        suspended_job = job_name(run, "batch-003")
        frozen, _ = world.wait_trainer_event(
            suspended_job,
            lambda e: e["kind"] == "progress" and e["globalStep"] >= 13,
            "a step inside batch 3",
            TRAINING_TIMEOUT,
        )
        world.pod_runner.kill(frozen.pod, signal.SIGSTOP)
        world.api.patch(f"{world.runs_path}/{run}", {"spec": {"suspend": True}})
        world.wait(lambda: signal_pending(frozen.pid, signal.SIGTERM), "SIGTERM for the suspended trainer")
        world.pod_runner.kill(frozen.pod, signal.SIGCONT)
        world.wait(lambda: frozen.returncode is not None, "the suspended trainer to exit", 60)
        assert frozen.returncode == 85, frozen.log()[-3000:]
        # (The Job may outlive currentJob by a moment: once its pod has failed it is no writer any more,
        # but the garbage collector removes it only after its pod.)
        world.wait_run(
            run,
            lambda r: (
                status(r).get("phase") == "Suspended"
                and not status(r).get("currentJob")
                and not world.exists(f"{world.jobs_path}/{suspended_job}")
            ),
            "Suspended, its Job gone",
        )
        # The batch no longer claims to be Training: it waits for the resume (issue 6, cosmetics).
        stopped = status(world.batch("batch-003"))
        assert (stopped["phase"], stopped["reason"], stopped["attempts"], stopped.get("failures")) == (
            "Queued",
            "Suspended",
            1,
            None,
        ), stopped
        assert condition(world.run(run), "Suspended")["status"] == "True"

        # Resume: the same attempt is created again and continues from the SIGTERM checkpoint.
        world.api.patch(f"{world.runs_path}/{run}", {"spec": {"suspend": False}})
        _, continued = world.wait_trainer_event(
            suspended_job, lambda e: e["kind"] == "batch-started", "batch 3 resumed", skip=1
        )
        assert continued["globalStep"] > 12, continued
        final = world.wait_run(
            run,
            lambda r: status(r).get("phase") == "Idle" and status(r).get("batchesCompleted") == 3,
            "Idle with 3 batches completed",
            timeout=TRAINING_TIMEOUT * 2,
        )
        assert status(final)["globalStep"] == 18

        expected = {"batch-001": (1, None), "batch-002": (2, 1), "batch-003": (1, None)}
        for batch, (start, end) in DEMO_STEPS.items():
            got = status(world.batch(batch))
            assert got["phase"] == "Succeeded", got
            assert (got["startStep"], got["endStep"]) == (start, end), got
            assert (got["attempts"], got.get("failures")) == expected[batch], got
        assert created_jobs(jobs.snapshot()) == Counter(
            {
                job_name(run, "batch-001"): 1,
                job_name(run, "batch-002"): 1,
                job_name(run, "batch-002", 2): 1,
                job_name(run, "batch-003"): 2,  # before the suspend and after it
            }
        )
        assert active.most == 1, f"Jobs active at the same time: {active.overlaps}"
        reasons = {
            e["reason"] for e in world.events() if e["involvedObject"]["kind"] == "ContinualTrainingRun"
        }
        assert {"Suspending", "Suspended", "Resumed"} <= reasons, reasons

        # Same weights as one uninterrupted process over the same data with the same settings.
        from continual_trainer.reference import run_uninterrupted
        from trainer.helpers import adapter_weights, max_abs_diff

        configs = trainer_configs(world, jobs.snapshot(), run)
        # The configs travelled in the Jobs: no ConfigMap per attempt (one API request less to create it,
        # one less to delete it with its Job).
        assert not [r for r in config_maps.snapshot() if r.object["metadata"]["name"].startswith(run)]
        reference = tmp_path / "reference" / run
        local = [on_this_machine(configs[b], volume=volume, run_dir=reference) for b, _ in DEMO_BATCHES]
        assert run_uninterrupted(local, reference).final_step == 18
        on_claim = volume / "runs" / run / "checkpoints" / "checkpoint-18"
        diff = max_abs_diff(
            adapter_weights(on_claim), adapter_weights(reference / "checkpoints" / "checkpoint-18")
        )
        assert diff == 0.0

        # Scenario 6: deleting the run deletes its Jobs (owner references, the garbage collector; no
        # operator finalizer) and keeps the claim made from the template (no owner).
        pvc = world.api.get(f"{world.claims_path}/{claim}")
        assert not pvc["metadata"].get("ownerReferences"), pvc["metadata"]
        assert world.jobs(run)
        world.control_plane.kubectl("delete", "ctr", run, "-n", world.namespace, "--wait=false")
        world.wait(
            lambda: (
                not world.exists(f"{world.runs_path}/{run}")
                and not world.jobs(run)
                and not world.config_maps(run)
                and not world.exists(f"/api/v1/namespaces/{world.namespace}/serviceaccounts/{run}-trainer")
            ),
            "the run, its Jobs and ServiceAccount to be deleted",
        )
        world.wait(
            lambda: (
                not [
                    p
                    for p in world.api.get(world.pods_path)["items"]
                    if p["metadata"]["name"].startswith(run)
                ]
            ),
            "the run's pods to be deleted",
        )
        kept = world.api.get(f"{world.claims_path}/{claim}")
        assert kept["metadata"]["uid"] == pvc["metadata"]["uid"]
        assert not kept["metadata"].get("deletionTimestamp")
        assert (on_claim / "adapter_model.safetensors").exists()


# --- 4: the CRD schema refuses invalid manifests at kubectl apply ------------------------------------

#: (what is wrong, the change to a valid run's spec, regexes the refusal must match). kubectl 1.37 checks
#: a 1.20 server's manifests on its side against the published OpenAPI v2 (unknown and missing fields;
#: a newer server answers those itself, in its own words: both are accepted); the server checks types
#: and bounds.
INVALID_MANIFESTS = [
    ("LoRA rank 0", {"lora": {"r": 0}}, [r"spec\.lora\.r\b", "greater than or equal to 1"]),
    (
        "a string for a number",
        {"training": {"learningRate": "fast"}},
        [r"spec\.training\.learningRate", "number"],
    ),
    ("an unknown field", {"lora": {"rank": 8}}, [r'unknown field "(spec\.lora\.)?rank"', r"spec\.lora"]),
    (
        "no storage",
        {"storage": None},
        [
            r'missing required field "storage"|spec\.storage: Required value',
            r"ContinualTrainingRun\.spec|spec\.storage",
        ],
    ),
]


@pytest.mark.parametrize(("case", "change", "says"), INVALID_MANIFESTS, ids=[c[0] for c in INVALID_MANIFESTS])
def test_the_crd_schema_refuses_an_invalid_run_at_kubectl_apply(
    control_plane: ControlPlane, crds: object, namespace: str, case: str, change: JSON, says: list[str]
) -> None:
    manifest = run_manifest("invalid", {"existingClaim": "data"})
    for key, value in change.items():
        if value is None:
            del manifest["spec"][key]
        elif isinstance(value, dict):
            manifest["spec"][key] = {**manifest["spec"][key], **value}
    applied = control_plane.kubectl(
        "apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(manifest), check=False
    )
    assert applied.returncode != 0, f"{case}: kubectl apply accepted it: {applied.stdout}"
    for pattern in says:
        assert re.search(pattern, applied.stderr), f"{case}: {applied.stderr}"
    gone = control_plane.kubectl("get", "ctr", "invalid", "-n", namespace, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


# --- 5: a run the schema accepts and the model refuses ------------------------------------------------


def test_a_semantically_invalid_run_is_degraded_with_an_event_naming_the_field(world: World) -> None:
    run = "unsafe-schedule"
    world.create(pvc_manifest("data"))
    manifest = run_manifest(run, {"existingClaim": "data"}, training={"lrSchedule": {"type": "cosine"}})
    with world.explained():
        world.create(manifest)  # the CRD allows any string: the schedule names are the trainer's
        world.create(batch_manifest("batch-001", run, "batch-001.jsonl"))
        degraded = world.wait_run(
            run,
            lambda r: any(
                c["type"] == "Degraded" and c["status"] == "True" for c in status(r).get("conditions") or []
            ),
            "Degraded",
        )
        assert status(degraded)["phase"] == "Failed"
        assert condition(degraded, "Degraded")["reason"] == "InvalidSpec"
        assert "spec.training.lrSchedule.type" in condition(degraded, "Degraded")["message"]
        assert condition(degraded, "Ready")["status"] == "False"
        assert condition(degraded, "Degraded")["observedGeneration"] == degraded["metadata"]["generation"]
        invalid = world.wait(
            lambda: [
                e
                for e in world.events()
                if e["reason"] == "InvalidSpec" and e["involvedObject"]["kind"] == "ContinualTrainingRun"
            ],
            "the operator's InvalidSpec Event",
        )
        assert len(invalid) == 1 and invalid[0]["type"] == "Warning", invalid
        assert invalid[0]["involvedObject"]["name"] == run
        assert "spec.training.lrSchedule.type" in invalid[0]["message"], invalid[0]["message"]
        assert not world.jobs(run)
        assert "Traceback" not in world.operator.log()  # a PermanentError, not a stack-trace loop

        # Fixing the manifest is the next step (kopf's update handler): the run recovers and its batch starts.
        world.api.patch(
            f"{world.runs_path}/{run}", {"spec": {"training": {"lrSchedule": {"type": "constant"}}}}
        )
        fixed = world.wait_run(run, lambda r: status(r).get("currentJob") is not None, "a Job after the fix")
        assert condition(fixed, "Degraded")["status"] == "False"
        assert condition(fixed, "Ready")["status"] == "True"
        assert [j["metadata"]["name"] for j in world.jobs(run)] == [job_name(run, "batch-001")]
