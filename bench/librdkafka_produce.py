#!/usr/bin/env python3
"""Sends one poll's records N times with confluent-kafka (librdkafka), the counterpart of
bench/produce (our producer), and prints one JSON line of timings.

    librdkafka_produce.py --broker HOST:PORT --topic T --values FILE [--keys FILE] --polls N
        [--mode sync|async] [--acks all|1|0] [--compression none|lz4|zstd|...] [--idempotence true|false]

A poll's records are the lines of --values (one JSON document per line), keyed by the lines of
--keys when given, as for bench/produce.
sync:  per poll, produce its records then flush(): what a producer waiting for each poll's acks
       does, the pattern of our binary and of the Python producer.
async: every poll's records queued, one flush() at the end: librdkafka's batching and pipelining
       across polls, its best case (a poll loop never has the next poll's records early).
The first poll (connect, metadata, producer id) is timed apart.
"""

import argparse
import json
import sys
import time

from confluent_kafka import Producer


def lines(path):
    with open(path, "rb") as f:
        return [line.rstrip(b"\n") for line in f if line.strip()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--values", required=True)
    ap.add_argument("--keys")
    ap.add_argument("--polls", type=int, default=100)
    ap.add_argument("--mode", choices=["sync", "async"], default="sync")
    ap.add_argument("--acks", default="all")
    ap.add_argument("--compression", default="none")
    ap.add_argument("--idempotence", default="true")
    a = ap.parse_args()

    values = lines(a.values)
    keys = lines(a.keys) if a.keys else [None] * len(values)
    poll_bytes = sum(len(v) for v in values)
    largest = max(len(v) for v in values)
    producer = Producer({
        "bootstrap.servers": a.broker,
        "acks": a.acks,
        "compression.type": a.compression,
        "enable.idempotence": a.idempotence == "true" and a.acks in ("all", "-1"),
        "message.max.bytes": max(1_000_000, 2 * largest + 65536),
        "queue.buffering.max.kbytes": max(1_048_576, 2 * poll_bytes // 1024),
        "queue.buffering.max.messages": max(100_000, 2 * len(values)),
    })
    failed = []

    def on_delivery(err, _msg):
        if err is not None:
            failed.append(err)

    def enqueue():
        for key, value in zip(keys, values):
            while True:
                try:
                    producer.produce(a.topic, value=value, key=key, on_delivery=on_delivery)
                    break
                except BufferError:  # local queue full: let librdkafka send some
                    producer.poll(0.01)

    started = time.perf_counter()
    enqueue()
    producer.flush(30)
    first_call = time.perf_counter() - started

    call_ms = []
    cpu_before = time.process_time()  # every thread of the process: librdkafka's too
    timed = time.perf_counter()
    for _ in range(a.polls):
        t = time.perf_counter()
        enqueue()
        if a.mode == "sync":
            producer.flush(30)
            call_ms.append(round((time.perf_counter() - t) * 1e3, 3))
    producer.flush(60)
    seconds = time.perf_counter() - timed
    cpu = time.process_time() - cpu_before
    if failed or len(producer) > 0:
        print(f"librdkafka_produce.py: {len(failed)} failed, {len(producer)} undelivered: {failed[:1]}",
              file=sys.stderr)
        return 1
    print(json.dumps({
        "records": a.polls * len(values), "bytes": a.polls * poll_bytes, "seconds": seconds, "cpu_seconds": cpu,
        "first_call_ms": first_call * 1e3, "call_ms": call_ms,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
