#!/usr/bin/env python3
"""A client of examples/line_echo.rs (mode `lines`) or examples/length_prefixed.rs (mode
`frames`) that turns the heartbeat on and answers every ping: the peer tests/liveness_netns.rs
stops with SIGSTOP, so that its kernel stays up while its application is frozen. Prints each
message from the server on a line of its own (`PING`, `BYE kicked`, ...), flushed at once.

Usage: liveness_peer.py lines|frames HOST PORT
"""
import socket
import struct
import sys


def lines(sock):
    sock.sendall(b"HEARTBEAT\n")
    for line in sock.makefile("rb"):
        line = line.rstrip(b"\n")
        print(line.decode(errors="replace"), flush=True)
        if line == b"PING":
            sock.sendall(b"PONG\n")


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        more = sock.recv(n - len(data))
        if not more:
            raise EOFError
        data += more
    return data


def frames(sock):
    sock.sendall(struct.pack(">I", 1) + b"H")
    while True:
        (length,) = struct.unpack(">I", read_exact(sock, 4))
        body = read_exact(sock, length)
        print(body[:1].decode() + " " + body[1:].decode(errors="replace"), flush=True)
        if body[:1] == b"P":
            sock.sendall(struct.pack(">I", 1) + b"O")


def main():
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sock = socket.create_connection((host, port))
    try:
        {"lines": lines, "frames": frames}[mode](sock)
    except (EOFError, ConnectionError):
        pass
    print("CLOSED", flush=True)


if __name__ == "__main__":
    main()
