#!/usr/bin/env python3
"""The benchmarks' feed server: serves fixture files over HTTP/1.1 (keep-alive) from memory and
notes when each request arrives.

    feed_server.py ARRIVALS_FILE FILE...

Prints its port on the first line of stdout, then serves GET /<basename of FILE> until killed.
One line per request goes to ARRIVALS_FILE: `<CLOCK_MONOTONIC ns when its first bytes were
read> <path>`. One thread and a selector, in a process of its own: no GIL shared with the
benchmark driver, so a request is stamped within microseconds of reaching the socket.
"""

import os
import selectors
import socket
import sys
import time


def main():
    arrivals = open(sys.argv[1], "w", buffering=1)
    bodies = {}
    for path in sys.argv[2:]:
        with open(path, "rb") as f:
            bodies["/" + os.path.basename(path)] = f.read()

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.setblocking(False)
    print(listener.getsockname()[1], flush=True)

    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    while True:
        for key, _ in sel.select():
            if key.data is None:
                conn, _ = listener.accept()
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(conn, selectors.EVENT_READ, {"buf": b"", "at": 0})
                continue
            conn, state = key.fileobj, key.data
            try:
                chunk = conn.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                chunk = b""
            if not chunk:
                sel.unregister(conn)
                conn.close()
                continue
            if not state["buf"]:
                state["at"] = time.monotonic_ns()
            state["buf"] += chunk
            while b"\r\n\r\n" in state["buf"]:
                head, _, state["buf"] = state["buf"].partition(b"\r\n\r\n")
                parts = head.split(b" ", 2)
                path = parts[1].decode("latin-1") if len(parts) > 1 else "/"
                arrivals.write(f"{state['at']} {path}\n")
                body = bodies.get(path)
                if body is None:
                    reply = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
                else:
                    reply = (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
                             b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                conn.setblocking(True)
                conn.settimeout(30)
                try:
                    conn.sendall(reply)
                except OSError:
                    sel.unregister(conn)
                    conn.close()
                    break
                conn.setblocking(False)
                state["at"] = time.monotonic_ns()


if __name__ == "__main__":
    main()
