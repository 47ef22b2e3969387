#!/usr/bin/env python3
"""Wait until a broker really accepts a produce (used by .ci/brokers).

An open TCP port is not enough: a KRaft broker answers Metadata before its
controller has elected itself and unfenced the broker, and produce fails
until then.  So: loop { metadata -> create topic -> produce acks=all } until
one record is acknowledged, or the deadline passes, or the broker process dies.

Exit codes: 0 ready, 1 timed out, 2 broker process died.
"""

import argparse
import os
import sys
import time

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

READY_TOPIC = "ci-ready"


def alive(pid):
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def try_once(bootstrap, budget):
    """One readiness attempt. Returns None on success, else a reason string."""
    quiet = {"bootstrap.servers": bootstrap, "log_level": 0}
    admin = AdminClient(quiet)
    md = admin.list_topics(timeout=min(3.0, budget))
    if not md.brokers:
        return "metadata lists no brokers"
    # Create explicitly (idempotent): the readiness check must not depend on
    # auto-creation, which brokers implement differently.
    fut = admin.create_topics(
        [NewTopic(READY_TOPIC, num_partitions=1, replication_factor=1)],
        operation_timeout=min(5.0, budget),
        request_timeout=min(6.0, budget),
    )[READY_TOPIC]
    try:
        fut.result()
    except KafkaException as e:
        if e.args[0].name() != "TOPIC_ALREADY_EXISTS":
            return f"create_topics: {e.args[0]}"
    result = {}
    p = Producer({
        **quiet,
        # acks=all + idempotence: also proves the producer-id (transaction)
        # coordinator is up, which a fresh Kafka reports as still loading.
        "acks": "all",
        "enable.idempotence": True,
        "message.timeout.ms": int(max(1.0, min(8.0, budget)) * 1000),
    })
    p.produce(READY_TOPIC, value=b"ready",
              on_delivery=lambda err, msg: result.update(err=err))
    p.flush(min(10.0, budget + 1))
    if "err" not in result:
        return "produce: no delivery report"
    if result["err"] is not None:
        return f"produce: {result['err']}"
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--timeout", type=float, default=90.0)
    ap.add_argument("--pid", type=int, default=None,
                    help="broker process; give up early if it exits")
    a = ap.parse_args()

    deadline = time.monotonic() + a.timeout
    last = "not tried"
    while True:
        if not alive(a.pid):
            print(f"broker process {a.pid} exited (last check: {last})", file=sys.stderr)
            return 2
        budget = deadline - time.monotonic()
        if budget <= 0:
            print(f"not ready after {a.timeout:.0f}s: {last}", file=sys.stderr)
            return 1
        try:
            last = try_once(a.bootstrap, budget)
        except KafkaException as e:
            last = str(e)
        if last is None:
            return 0
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
