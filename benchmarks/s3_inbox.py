"""S3 inbox benchmarks: object put -> TrainingBatch exists, and the cost of listing a 10,000-object inbox.

1. **Latency** at the default poll interval (``--poll-seconds``, default 30): the real reconciler, with its
   own requeue timers, polls a run's inbox on moto's S3 (ThreadedMotoServer over HTTP) and creates
   TrainingBatches on kmock's API server. ``--samples`` objects are put at uniformly random instants over
   ``--windows`` poll intervals; the clock starts before each ``put_object`` and stops when the batch is
   first seen in the API server's store (checked every 20 ms). Expected: about half a poll interval on
   average, at most one interval plus the poll's own cost.
2. **Listing cost** of an inbox with ``--objects`` objects (default 10,000; seeded in moto's backend,
   listed over HTTP): the polls that take the whole backlog at the default ``maxKeysPerPoll`` (1,000),
   then one steady-state poll with nothing new, deep in the history. Requests are counted on the boto3
   client; the steady-state poll must not cost more because the history is long.

Usage: python benchmarks/s3_inbox.py [--poll-seconds 30 --samples 40 --windows 2 --objects 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "operator")]

import kmock  # noqa: E402
from kube_world import BATCHES, NS, RUN, RUNS, KubeWorld, run_body  # noqa: E402
from tests.s3server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, S3Server, running_s3_server  # noqa: E402

from continual_operator.api import InboxSpec, InboxStatus  # noqa: E402
from continual_operator.cluster.reconciler import Reconciler  # noqa: E402
from continual_operator.inbox.decide import decide, inbox_batch_name  # noqa: E402
from continual_operator.inbox.store import InboxLister  # noqa: E402
from continual_trainer.config import ObjectStoreClientSpec  # noqa: E402
from continual_trainer.objectstore import Credentials, make_client  # noqa: E402

BUCKET = "inbox-bench"
URI = f"s3://{BUCKET}/in/"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- 1. latency ----------------------------------------------------------------------------------------
async def latency(server: S3Server, *, poll_seconds: int, samples: int, windows: int) -> list[float]:
    server.make_bucket(BUCKET)
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator):
        world = KubeWorld(emulator)
        emulator.resources[kmock.resource("", "v1", "secrets")] = kmock.ResourceInfo(
            kind="Secret", namespaced=True, verbs={"get"}
        )
        world.add(
            RUNS,
            run_body(
                objectStore=server.object_store(),
                inbox={"uri": URI, "pollSeconds": poll_seconds},
                resources={"gpus": 0},
            ),
        )
        reconciler = Reconciler(world.storage())
        await reconciler.reconcile((NS, RUN))  # the first poll; the reconciler's timers do the rest
        client = server.client()
        span = poll_seconds * windows
        offsets = sorted(random.uniform(0, span) for _ in range(samples))
        put_at: dict[str, float] = {}
        seen_at: dict[str, float] = {}
        start = time.monotonic()

        async def put(i: int, offset: float) -> None:
            await asyncio.sleep(max(0.0, start + offset - time.monotonic()))
            key = f"{i:05}.jsonl"
            put_at[inbox_batch_name(RUN, key)] = time.monotonic()
            await asyncio.to_thread(client.put_object, Bucket=BUCKET, Key=f"in/{key}", Body=b"x\n")

        async def watch() -> None:
            while len(seen_at) < samples:
                now = time.monotonic()
                for name in world.names(BATCHES):
                    if name in put_at and name not in seen_at:
                        seen_at[name] = now
                await asyncio.sleep(0.02)

        await asyncio.wait_for(
            asyncio.gather(watch(), *(put(i, o) for i, o in enumerate(offsets))), span + 3 * poll_seconds + 30
        )
        await reconciler.close()
        reconciler.storage.close()
        return [seen_at[n] - put_at[n] for n in put_at]


# -- 2. listing cost -------------------------------------------------------------------------------------
def listing_cost(server: S3Server, *, objects: int) -> dict[str, Any]:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    server.make_bucket(BUCKET)
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    for i in range(objects):
        backend.put_object(BUCKET, f"in/{i:06}.jsonl", b"x\n")
    client = make_client(
        ObjectStoreClientSpec.model_validate(server.object_store()),
        credentials=Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY),
    )
    sent: list[str] = []
    client.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.url))
    spec = InboxSpec(uri=URI)
    status: InboxStatus | None = None
    polls, ingested, started = 0, 0, time.monotonic()
    while True:
        listing = InboxLister(client, spec).poll(status)
        decision = decide(RUN, spec, status, listing, [])
        status, polls, ingested = decision.status, polls + 1, ingested + len(decision.create)
        if not listing.backlog:
            break
    backlog_seconds, backlog_requests = time.monotonic() - started, len(sent)
    sent.clear()
    started = time.monotonic()
    listing = InboxLister(client, spec).poll(status)
    steady_seconds = time.monotonic() - started
    return {
        "objects": objects,
        "ingested": ingested,
        "polls": polls,
        "backlog_seconds": backlog_seconds,
        "backlog_requests": backlog_requests,
        "steady_requests": len(sent),
        "steady_seconds": steady_seconds,
        "steady_new_units": len(listing.units),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--poll-seconds", type=int, default=InboxSpec.model_fields["poll_seconds"].default)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--objects", type=int, default=10_000)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    # The operator's client finds the moto credentials through the boto3 chain (its environment).
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY)

    with running_s3_server() as server:
        print(
            f"== object put -> TrainingBatch exists (pollSeconds {args.poll_seconds}, {args.samples} samples)"
        )
        values = asyncio.run(
            latency(server, poll_seconds=args.poll_seconds, samples=args.samples, windows=args.windows)
        )
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        print(
            f"p50 {p50:.2f} s   p99 {p99:.2f} s   mean {statistics.mean(values):.2f} s   max {max(values):.2f} s"
        )
        print(
            f"goal: p50 <= pollSeconds/2 + 2 s = {args.poll_seconds / 2 + 2:.1f} s "
            f"({'met' if p50 <= args.poll_seconds / 2 + 2 else 'MISSED'}); "
            f"p99 <= pollSeconds + 2 s = {args.poll_seconds + 2:.1f} s "
            f"({'met' if p99 <= args.poll_seconds + 2 else 'MISSED'})"
        )
        server.reset()
        print(f"== listing cost, {args.objects} objects, maxKeysPerPoll 1000")
        cost = listing_cost(server, objects=args.objects)
        print(
            f"backlog: {cost['ingested']} batches decided in {cost['polls']} polls, {cost['backlog_requests']} "
            f"requests, {cost['backlog_seconds']:.1f} s "
            f"({cost['backlog_requests'] / cost['polls']:.1f} requests/poll)"
        )
        print(
            f"steady state (nothing new, {args.objects} keys of history): {cost['steady_requests']} requests, "
            f"{cost['steady_seconds']:.2f} s"
        )
        print(
            "goal: <= 2 requests per steady-state poll whatever the history "
            f"({'met' if cost['steady_requests'] <= 2 else 'MISSED'}); "
            f"backlog: ceil({args.objects}/1000) polls = {-(-args.objects // 1000)} "
            f"({'met' if cost['polls'] <= -(-args.objects // 1000) + 1 else 'MISSED'})"
        )


if __name__ == "__main__":
    main()
