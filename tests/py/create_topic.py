#!/usr/bin/env python3
"""Create a topic, idempotently, for the integration tests.

    python3 tests/py/create_topic.py --bootstrap HOST:PORT --topic T \
        [--partitions N] [--replication-factor R] [--timeout SECONDS]

Exit 0 if the topic exists afterwards (created now or already there; an
existing topic is left as it is, whatever its partition count, and a note
goes to stderr when that count differs from --partitions).  Exit 1 otherwise.
Retries transient errors (broker still starting) until --timeout.
"""

import argparse
import sys
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

# Errors that mean "try again in a moment", not "this cannot work".
RETRIABLE = {
    "_TRANSPORT", "_TIMED_OUT", "_ALL_BROKERS_DOWN", "REQUEST_TIMED_OUT",
    "NOT_CONTROLLER", "LEADER_NOT_AVAILABLE", "BROKER_NOT_AVAILABLE",
    "COORDINATOR_NOT_AVAILABLE", "NOT_ENOUGH_REPLICAS", "INVALID_REPLICATION_FACTOR",
    "UNKNOWN_TOPIC_OR_PART", "_MSG_TIMED_OUT",
}


def eprint(*a):
    print("create_topic.py:", *a, file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--replication-factor", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args()

    admin = AdminClient({"bootstrap.servers": a.bootstrap, "log_level": 0})
    deadline = time.monotonic() + a.timeout
    last = None
    while time.monotonic() < deadline:
        budget = max(1.0, min(10.0, deadline - time.monotonic()))
        fut = admin.create_topics(
            [NewTopic(a.topic, num_partitions=a.partitions, replication_factor=a.replication_factor)],
            operation_timeout=budget, request_timeout=budget + 1,
        )[a.topic]
        try:
            fut.result()
            verb = "created"
        except KafkaException as e:
            err = e.args[0]
            if err.name() == "TOPIC_ALREADY_EXISTS":
                verb = "already exists"
            elif err.name() in RETRIABLE or err.retriable():
                last = err
                time.sleep(0.5)
                continue
            else:
                eprint(f"cannot create {a.topic!r}: {err}")
                return 1
        # Wait until metadata shows the topic with partitions (creation is
        # asynchronous on Kafka: the controller has it before the broker does).
        while time.monotonic() < deadline:
            try:
                md = admin.list_topics(a.topic, timeout=2)
            except KafkaException as e:
                last = e
                time.sleep(0.2)
                continue
            t = md.topics.get(a.topic)
            if t is not None and t.error is None and t.partitions:
                n = len(t.partitions)
                if n != a.partitions:
                    eprint(f"note: {a.topic!r} has {n} partitions, not {a.partitions}")
                print(f"{a.topic}: {verb} ({n} partitions)")
                return 0
            time.sleep(0.2)
        break
    eprint(f"gave up after {a.timeout}s: {last}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
