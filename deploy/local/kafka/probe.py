#!/usr/bin/env python3
"""Tiny Kafka-protocol readiness probe (standard library only).

    probe.py HOST:PORT [TIMEOUT_SECONDS]

Sends ApiVersions, then a Metadata request for all topics, and exits 0 when the
broker answers both and lists at least one broker; prints a one-line summary.
Exits 1 (with the reason on stderr) otherwise. Used by deploy/local/services.sh
because starting a JVM for kafka-topics takes seconds on a small machine.
"""

import socket
import struct
import sys

API_METADATA = 3
API_VERSIONS = 18
CLIENT_ID = b"lakeward-probe"


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return bytes(buf)


def request(sock, api_key, version, correlation_id, body):
    # request header v1: api_key, api_version, correlation_id, client_id
    header = struct.pack(">hhih", api_key, version, correlation_id, len(CLIENT_ID)) + CLIENT_ID
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    (size,) = struct.unpack(">i", recv_exact(sock, 4))
    data = recv_exact(sock, size)
    (got,) = struct.unpack(">i", data[:4])
    if got != correlation_id:
        raise RuntimeError(f"correlation id mismatch ({got} != {correlation_id})")
    return data[4:]  # response header v0 is just the correlation id


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, fmt):
        vals = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return vals[0] if len(vals) == 1 else vals

    def string(self):
        n = self.take(">h")
        if n < 0:
            return None
        s = self.data[self.pos:self.pos + n].decode("utf-8", "replace")
        self.pos += n
        return s


def probe(host, port, timeout):
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        # ApiVersions v0: every broker answers it
        r = Reader(request(sock, API_VERSIONS, 0, 1, b""))
        err = r.take(">h")
        if err != 0:
            raise RuntimeError(f"ApiVersions error code {err}")
        ranges = {}
        for _ in range(r.take(">i")):
            key, lo, hi = r.take(">hhh")
            ranges[key] = (lo, hi)
        if API_METADATA not in ranges:
            raise RuntimeError("broker does not offer Metadata")
        lo, hi = ranges[API_METADATA]
        version = min(hi, 8)  # v9+ use the flexible encoding; stay below it
        if version < lo or version < 1:
            return f"broker answers ApiVersions (Metadata v{lo}-v{hi} not probed)"
        body = struct.pack(">i", -1)  # null topic array = all topics
        if version >= 4:
            body += struct.pack(">b", 0)  # allow_auto_topic_creation
        if version >= 8:
            body += struct.pack(">bb", 0, 0)  # include_*_authorized_operations
        r = Reader(request(sock, API_METADATA, version, 2, body))
        if version >= 3:
            r.take(">i")  # throttle_time_ms
        brokers = []
        for _ in range(r.take(">i")):
            node_id = r.take(">i")
            bhost = r.string()
            bport = r.take(">i")
            r.string()  # rack
            brokers.append(f"{node_id}@{bhost}:{bport}")
        cluster_id = r.string() if version >= 2 else None
        controller = r.take(">i")
        topics = r.take(">i")
        if not brokers:
            raise RuntimeError("Metadata lists no broker yet")
        return (f"cluster {cluster_id} brokers {','.join(brokers)} "
                f"controller {controller} topics {topics} (Metadata v{version})")


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    host, _, port = argv[1].rpartition(":")
    timeout = float(argv[2]) if len(argv) > 2 else 3.0
    try:
        print(probe(host or "127.0.0.1", int(port), timeout))
        return 0
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        print(f"kafka probe {argv[1]}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
