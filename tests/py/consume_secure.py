#!/usr/bin/env python3
"""Independent reader for tests/security.rs: confluent-kafka (librdkafka) over TLS/SASL.

    python3 tests/py/consume_secure.py --bootstrap HOST:PORT --topic T --count N \
        --timeout SECONDS [-X name=value]...

-X passes librdkafka properties (security.protocol, sasl.*, ssl.*), so the reader
authenticates on its own, with the same credentials the producer under test used.
Assigns every partition of the topic from offset 0 (no consumer group) and prints
one JSON object per record on stdout: {"partition", "offset", "key", "value",
"headers"}; key/value as UTF-8 text (null when absent), headers as [name, value]
pairs.  Exit status: 0 when N records were read, 3 on timeout (what was read is
still printed), 1 on a client error (authentication, TLS), 2 on bad usage.
"""

import argparse
import json
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition


def text(b):
    return None if b is None else b.decode("utf-8", errors="backslashreplace")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--timeout", type=float, required=True)
    ap.add_argument("-X", dest="props", action="append", default=[], metavar="NAME=VALUE")
    a = ap.parse_args()
    conf = {
        "bootstrap.servers": a.bootstrap,
        "group.id": "consume-secure-py",
        "enable.auto.commit": False,
        "allow.auto.create.topics": False,
    }
    for prop in a.props:
        name, sep, value = prop.partition("=")
        if not sep:
            ap.error(f"-X {prop!r} is not name=value")
        conf[name] = value
    errors = []
    conf["error_cb"] = lambda err: errors.append(err)
    consumer = Consumer(conf)
    deadline = time.monotonic() + a.timeout
    got = 0
    try:
        while time.monotonic() < deadline:
            if errors and any(e.code() in (-169, -168) or "Authentication" in str(e) for e in errors):
                print("consume_secure.py: fatal:", errors[-1], file=sys.stderr)
                return 1
            try:
                md = consumer.list_topics(a.topic, timeout=2.0)
            except KafkaException as e:
                errors.append(e.args[0])
                continue
            t = md.topics.get(a.topic)
            if t is not None and t.error is None and t.partitions:
                consumer.assign([TopicPartition(a.topic, p, OFFSET_BEGINNING) for p in t.partitions])
                break
            time.sleep(0.2)
        while got < a.count and time.monotonic() < deadline:
            msg = consumer.poll(min(0.5, max(0.0, deadline - time.monotonic())))
            if msg is None or msg.error() is not None:
                continue
            print(json.dumps({
                "partition": msg.partition(),
                "offset": msg.offset(),
                "key": text(msg.key()),
                "value": text(msg.value()),
                "headers": [[k, text(v)] for k, v in (msg.headers() or [])],
            }), flush=True)
            got += 1
    finally:
        consumer.close()
    if got < a.count:
        print(f"consume_secure.py: timeout: read {got} of {a.count}; errors: {errors[-3:]}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
