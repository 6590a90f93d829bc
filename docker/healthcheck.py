#!/usr/bin/env python3
"""Container health checks that need nothing beyond the Python standard library (the image has no curl).

    lianfang-healthcheck http URL             exit 0 when URL answers 200 within 3 s
    lianfang-healthcheck mqtt-connected PORT  exit 0 when this container holds an established TCP connection
                                              to a remote PORT (read from /proc/net/tcp and /proc/net/tcp6)

``lianfang serve`` is checked with ``http .../api/v1/health/ready`` (store, registry, broker and ingest).
``lianfang ingest`` has no HTTP port; ``mqtt-connected 1883`` tells whether its MQTT session is up. A
container has its own network namespace, so only its own connections are visible.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

TCP_ESTABLISHED = "01"
PROC_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))


def established_to(port: int, tables: Iterable[str]) -> bool:
    """True when a row of a /proc/net/tcp{,6} table is an established connection to remote ``port``."""
    for table in tables:
        for line in table.splitlines()[1:]:
            cols = line.split()
            if len(cols) < 4:
                continue
            remote, state = cols[2], cols[3]
            if state == TCP_ESTABLISHED and int(remote.rsplit(":", 1)[1], 16) == port:
                return True
    return False


def http_ok(url: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "http":
        return 0 if http_ok(argv[2]) else 1
    if len(argv) == 3 and argv[1] == "mqtt-connected":
        tables = [p.read_text() for p in PROC_TABLES if p.exists()]
        return 0 if established_to(int(argv[2]), tables) else 1
    print("usage: lianfang-healthcheck http URL | mqtt-connected PORT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
