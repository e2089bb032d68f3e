#!/usr/bin/env python3
"""Idle peers that watch their sockets: a separate load process for the upgrade tests.

    idle_peers.py ADDR N [SOURCES]

Opens N connections to ADDR (from 127.0.0.2, 127.0.0.3, ... SOURCES addresses, so that local
ports never run out), sends nothing, and watches every socket: a FIN (a read of zero bytes) or
an RST (ECONNRESET, EPIPE) is counted against the connection's number, and whatever bytes the
server sends are counted as data. It prints one JSON line when all are up ({"event": "ready"})
and one with the counts at each line read on standard input ({"event": "report"}), and exits at
the end of standard input.
"""

import errno
import json
import selectors
import socket
import sys
import threading


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    count = int(sys.argv[2])
    sources = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    selector = selectors.EpollSelector()
    socks = []
    failed = 0
    for i in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((f"127.0.0.{2 + i % sources}", 0))
            sock.connect((host, int(port)))
        except OSError:
            failed += 1
            sock.close()
            continue
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, len(socks))
        socks.append(sock)
    lock = threading.Lock()
    state = {"open": len(socks), "fin": [], "rst": [], "data_bytes": 0}

    def report(event):
        with lock:
            line = {
                "event": event,
                "connected": len(socks),
                "failed": failed,
                "open": state["open"],
                "fin": len(state["fin"]),
                "rst": len(state["rst"]),
                "first_ended": (state["fin"] + state["rst"])[:5],
                "data_bytes": state["data_bytes"],
            }
        print(json.dumps(line), flush=True)

    def watch():
        while True:
            for key, _ in selector.select(timeout=0.2):
                sock, number = key.fileobj, key.data
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as error:
                    if error.errno in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT):
                        with lock:
                            state["rst"].append(number)
                            state["open"] -= 1
                        selector.unregister(sock)
                        continue
                    raise
                with lock:
                    if data:
                        state["data_bytes"] += len(data)
                        continue
                    state["fin"].append(number)
                    state["open"] -= 1
                selector.unregister(sock)

    threading.Thread(target=watch, daemon=True).start()
    report("ready")
    for _ in sys.stdin:
        report("report")


if __name__ == "__main__":
    main()
