#!/usr/bin/env python3
"""The upstream conversion in-process, timed: ParseFromString, MessageToDict(preserving_proto_field_name=True),
json.dumps. Prints one JSON line: the protobuf backend and per-run seconds of each step (wall),
and of the whole (wall and process CPU time).

    python_convert.py FILE RUNS [--check OUR_JSON]

json.dumps writes the bytes gtfs-rt-kafka writes (ensure_ascii=False, compact separators), so both
sides do the same work. With --check, our document (minus the three envelope fields) must equal
Python's dict, or the script exits 1: a benchmark of a wrong converter is worthless.
"""

import json
import sys
import time

from google.protobuf.internal import api_implementation
from google.protobuf.json_format import MessageToDict
from google.transit import gtfs_realtime_pb2


def main():
    path, runs = sys.argv[1], int(sys.argv[2])
    data = open(path, "rb").read()
    parse, to_dict, dumps, total, cpu = [], [], [], [], []
    for _ in range(runs):
        c0 = time.process_time()
        t0 = time.perf_counter()
        feed = gtfs_realtime_pb2.FeedMessage()
        feed.ParseFromString(data)
        t1 = time.perf_counter()
        d = MessageToDict(feed, preserving_proto_field_name=True)
        t2 = time.perf_counter()
        out = json.dumps(d, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        t3 = time.perf_counter()
        cpu.append(time.process_time() - c0)
        parse.append(t1 - t0)
        to_dict.append(t2 - t1)
        dumps.append(t3 - t2)
        total.append(t3 - t0)
    if len(sys.argv) > 3 and sys.argv[3] == "--check":
        ours = json.loads(open(sys.argv[4], "rb").read())
        for k in ("producer_timestamp", "source_id", "event_type"):
            ours.pop(k, None)
        if ours != d:
            print(f"python_convert.py: our JSON for {path} differs from MessageToDict", file=sys.stderr)
            return 1
    print(json.dumps({
        "backend": api_implementation.Type(), "json_bytes": len(out),
        "parse": parse, "to_dict": to_dict, "dumps": dumps, "total": total, "cpu": cpu,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
