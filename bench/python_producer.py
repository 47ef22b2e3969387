#!/usr/bin/env python3
"""Reference Python producer: the upstream behaviour gtfs-rt-kafka replaces, for benchmarks.

Every POLL_INTERVAL seconds: GET VEHICLE_URL with requests, parse the body as a GTFS-Realtime
FeedMessage, turn it into a dict with MessageToDict(preserving_proto_field_name=True), add
producer_timestamp / source_id / event_type, json.dumps it and produce it with confluent-kafka
(librdkafka) as one record without a key, then flush (wait for the broker's ack).

Same environment variables and defaults as the upstream producer and gtfs-rt-kafka:
    VEHICLE_URL, KAFKA_BROKER, KAFKA_TOPIC, POLL_INTERVAL, SOURCE_ID, EVENT_TYPE
librdkafka's own defaults apply (acks=all, no compression, no idempotence) unless the benchmark
sets the knobs below, which the upstream producer does not have:
    KAFKA_ACKS, KAFKA_COMPRESSION, KAFKA_IDEMPOTENCE   as gtfs-rt-kafka's settings of those names
    KAFKA_MESSAGE_MAX_BYTES   librdkafka's message.max.bytes (its 1 MB default refuses big feeds)
    POLLS                     stop after this many polls (0 = forever); exit 1 if the last failed

One line per poll goes to stderr, with the poll's duration (fetch to ack) in fractional ms:
    poll ok: 25748 bytes fetched, 98 entities, 95871 bytes JSON -> bench[0]@12 in 6.412 ms
"""

import json
import os
import sys
import time

import requests
from confluent_kafka import Producer
from google.protobuf.json_format import MessageToDict
from google.transit import gtfs_realtime_pb2

VEHICLE_URL = os.environ.get(
    "VEHICLE_URL", "https://api-public.odpt.org/api/v4/gtfs/realtime/toei_odpt_train_vehicle"
)
KAFKA_BROKER = os.environ.get("KAFKA_BROKER", "kafka:9092")
KAFKA_TOPIC = os.environ.get("KAFKA_TOPIC", "dev_topic")
POLL_INTERVAL = float(os.environ.get("POLL_INTERVAL", "60"))
SOURCE_ID = os.environ.get("SOURCE_ID", "toei_vehicle_api")
EVENT_TYPE = os.environ.get("EVENT_TYPE", "gtfs_realtime_vehicle")
POLLS = int(os.environ.get("POLLS", "0"))


def log(line):
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    print(f"{stamp} {line}", file=sys.stderr, flush=True)


def producer_config():
    config = {"bootstrap.servers": KAFKA_BROKER}
    knobs = {
        "KAFKA_ACKS": "acks",
        "KAFKA_COMPRESSION": "compression.type",
        "KAFKA_IDEMPOTENCE": "enable.idempotence",
        "KAFKA_MESSAGE_MAX_BYTES": "message.max.bytes",
    }
    for env, key in knobs.items():
        if os.environ.get(env):
            config[key] = os.environ[env]
    return config


def poll_once(producer):
    """One poll: fetch, convert, produce, wait for the ack. Returns the log line."""
    started = time.perf_counter()
    response = requests.get(VEHICLE_URL, timeout=30)
    response.raise_for_status()
    feed = gtfs_realtime_pb2.FeedMessage()
    feed.ParseFromString(response.content)
    data = MessageToDict(feed, preserving_proto_field_name=True)
    data["producer_timestamp"] = time.time()
    data["source_id"] = SOURCE_ID
    data["event_type"] = EVENT_TYPE
    value = json.dumps(data).encode("utf-8")

    delivered = []
    producer.produce(KAFKA_TOPIC, value=value, on_delivery=lambda err, msg: delivered.append((err, msg)))
    producer.flush(30)
    if not delivered:
        raise RuntimeError("not delivered within 30 s")
    err, msg = delivered[0]
    if err is not None:
        raise RuntimeError(f"delivery failed: {err}")
    elapsed_ms = (time.perf_counter() - started) * 1000
    return (
        f"poll ok: {len(response.content)} bytes fetched, {len(feed.entity)} entities, "
        f"{len(value)} bytes JSON -> {msg.topic()}[{msg.partition()}]@{msg.offset()} in {elapsed_ms:.3f} ms"
    )


def main():
    producer = Producer(producer_config())
    polls = 0
    last_ok = False
    while True:
        try:
            log(poll_once(producer))
            last_ok = True
        except Exception as e:  # one failed poll never stops the loop, as upstream
            log(f"poll failed: {e}")
            last_ok = False
        polls += 1
        if POLLS and polls >= POLLS:
            return 0 if last_ok else 1
        time.sleep(POLL_INTERVAL)


if __name__ == "__main__":
    sys.exit(main())
