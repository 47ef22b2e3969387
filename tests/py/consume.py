#!/usr/bin/env python3
"""Independent Kafka reader for the integration tests.

    python3 tests/py/consume.py --bootstrap HOST:PORT --topic T --count N \
        --timeout SECONDS [--from-beginning] [--assign] [--group G]

Reads N records with a fresh consumer group (auto.offset.reset=earliest, so a
fresh group starts at the beginning of every partition) and prints one JSON
object per line on stdout, flushed per record:

    {"partition": int, "offset": int, "key": str|null, "value": str|null,
     "timestamp_ms": int, "headers": [[name, value|null], ...]}

key/value/header values are decoded as UTF-8 (undecodable bytes become
\\xNN escapes); null means the field was absent (null key, tombstone).
headers is a list of pairs, in wire order, so repeated names are kept.

Exit status: 0 when N records were read, 3 on timeout (the records read so far
are still printed), 1 on a fatal client error, 2 on bad usage.

--from-beginning is the default behaviour (kept for kafka-console-consumer
muscle memory); --assign skips group management entirely and reads every
partition of the topic from offset 0 (useful when a broker's group
coordinator is slow or missing).  Diagnostics go to stderr.
"""

import argparse
import json
import logging
import sys
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

EXIT_OK, EXIT_FATAL, EXIT_TIMEOUT = 0, 1, 3


def text(b):
    if b is None:
        return None
    if isinstance(b, str):
        return b
    return b.decode("utf-8", errors="backslashreplace")


def record(msg):
    _ts_type, ts = msg.timestamp()
    return {
        "partition": msg.partition(),
        "offset": msg.offset(),
        "key": text(msg.key()),
        "value": text(msg.value()),
        "timestamp_ms": ts,
        "headers": [[k, text(v)] for k, v in (msg.headers() or [])],
    }


def eprint(*a):
    print("consume.py:", *a, file=sys.stderr, flush=True)


class _Once(logging.Filter):
    """librdkafka repeats e.g. 'Connect ... failed' every few ms: show each once."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def filter(self, rec):
        key = rec.getMessage()
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def client_logger():
    log = logging.getLogger("consume.py.librdkafka")
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("consume.py: librdkafka: %(message)s"))
    h.addFilter(_Once())
    log.addHandler(h)
    log.setLevel(logging.WARNING)
    log.propagate = False
    return log


def assign_all(consumer, topic, deadline):
    """--assign mode: wait for the topic to exist, assign all partitions at 0."""
    while time.monotonic() < deadline:
        try:
            md = consumer.list_topics(topic, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
        except KafkaException as e:
            eprint("metadata:", e)
            time.sleep(0.2)
            continue
        t = md.topics.get(topic)
        if t is not None and t.error is None and t.partitions:
            parts = sorted(t.partitions)
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
            return len(parts)
        time.sleep(0.2)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bootstrap", required=True, help="HOST:PORT[,HOST:PORT...]")
    ap.add_argument("--topic", required=True)
    ap.add_argument("--count", type=int, required=True, help="records to read (>= 0)")
    ap.add_argument("--timeout", type=float, required=True, help="seconds, overall")
    ap.add_argument("--from-beginning", action="store_true",
                    help="start at the earliest offset (the default anyway)")
    ap.add_argument("--assign", action="store_true",
                    help="no consumer group protocol: assign all partitions from offset 0")
    ap.add_argument("--group", default=None, help="group id (default: a fresh random one)")
    a = ap.parse_args()
    if a.count < 0:
        ap.error("--count must be >= 0")

    deadline = time.monotonic() + a.timeout
    conf = {
        "bootstrap.servers": a.bootstrap,
        "group.id": a.group or f"consume-py-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest",
        # Read-only observer: never commit, never create topics.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "allow.auto.create.topics": False,
        # 6 s is the smallest session timeout Apache Kafka accepts by default
        # (group.min.session.timeout.ms); tansu holds JoinGroup for about half
        # the session timeout, so the 45 s default would cost ~23 s per run.
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        "topic.metadata.refresh.interval.ms": 1000,
        # Only see committed data if the producer is transactional.
        "isolation.level": "read_committed",
    }
    consumer = Consumer(conf, logger=client_logger())

    got = 0
    rc = EXIT_TIMEOUT
    try:
        if a.count == 0:
            rc = EXIT_OK
        elif a.assign:
            if assign_all(consumer, a.topic, deadline) == 0:
                eprint(f"topic {a.topic!r} did not appear within {a.timeout}s")
        else:
            consumer.subscribe([a.topic])

        while rc != EXIT_OK and got < a.count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            msg = consumer.poll(min(0.5, left))
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                # The topic may simply not exist yet (the producer under test
                # has not run): keep waiting until the deadline.
                if err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._PARTITION_EOF):
                    continue
                if err.fatal() or err.code() in (KafkaError.TOPIC_AUTHORIZATION_FAILED,
                                                 KafkaError.GROUP_AUTHORIZATION_FAILED):
                    eprint("fatal:", err)
                    rc = EXIT_FATAL
                    break
                eprint("warning:", err)
                continue
            print(json.dumps(record(msg), ensure_ascii=False), flush=True)
            got += 1
        if got >= a.count:
            rc = EXIT_OK
    except KafkaException as e:
        eprint("fatal:", e)
        rc = EXIT_FATAL
    finally:
        try:
            consumer.close()
        except Exception:  # closing must not mask the result
            pass

    if rc == EXIT_TIMEOUT:
        eprint(f"timeout after {a.timeout}s: read {got} of {a.count} records from {a.topic!r}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
