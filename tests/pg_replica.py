"""A PostgreSQL primary and its streaming replica of our own, on free ports, with Debian's PostgreSQL 15 binaries.

Self-contained: ``initdb`` makes a primary in a temporary directory (trust authentication, ``wal_level=replica``,
listening on 127.0.0.1 only), ``pg_basebackup -R`` copies it into a replica that streams from it. The system's
server at 127.0.0.1:5432 and its configuration are not touched (its pg_hba.conf does not allow replication).
Run as root, the servers run as the ``postgres`` OS user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devices.broker import free_port

PG_BIN = Path(os.environ.get("LIANFANG_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
TOOLS = ("initdb", "pg_ctl", "pg_basebackup", "postgres")


def unavailable() -> str | None:
    """Why the pair cannot run here, or None."""
    missing = [t for t in TOOLS if not (PG_BIN / t).exists()]
    if missing:
        return f"PostgreSQL binaries not found in {PG_BIN}: {', '.join(missing)} (apt-get install postgresql-15)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' OS user to run the servers as"
    return None


@dataclass
class PgPair:
    directory: Path
    primary_port: int
    replica_port: int
    _user: dict[str, Any] = field(default_factory=dict)

    def url(self, port: int, db: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{port}/{db}"

    def primary_url(self, db: str = "postgres") -> str:
        return self.url(self.primary_port, db)

    def replica_url(self, db: str = "postgres") -> str:
        return self.url(self.replica_port, db)

    def _run(self, *args: str, timeout: float = 60) -> None:
        result = subprocess.run(
            [str(PG_BIN / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.directory,
            **self._user,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")

    def _pg_ctl(self, data: str, port: int, action: str, *extra: str) -> None:
        opts = f"-p {port} -k {self.directory}"
        self._run("pg_ctl", "-D", str(self.directory / data), "-l", str(self.directory / f"{data}.log"),
                  "-o", opts, "-w", "-t", "60", action, *extra)  # fmt: skip

    def start_replica(self) -> None:
        self._pg_ctl("replica", self.replica_port, "start")

    def stop_replica(self) -> None:
        self._pg_ctl("replica", self.replica_port, "stop", "-m", "fast")

    def stop(self) -> None:
        for data, port in (("replica", self.replica_port), ("primary", self.primary_port)):
            if (self.directory / data / "postmaster.pid").exists():
                with contextlib.suppress(Exception):
                    self._pg_ctl(data, port, "stop", "-m", "immediate")


def start_pair() -> PgPair:
    """initdb a primary, start it, base-backup a replica with -R (standby.signal, primary_conninfo), start it."""
    directory = Path(tempfile.mkdtemp(prefix="lf-pg-replica-"))
    user: dict[str, Any] = {}
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(directory, pw.pw_uid, pw.pw_gid)
        user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    pair = PgPair(directory, free_port(), free_port(), user)
    try:
        pair._run("initdb", "-D", str(directory / "primary"), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-locale", "--no-sync")  # fmt: skip
        conf = directory / "primary" / "postgresql.conf"
        with conf.open("a", encoding="utf-8") as f:
            # trust for replication from 127.0.0.1 is in initdb's pg_hba.conf with --auth=trust
            f.write(
                "\nlisten_addresses = '127.0.0.1'\nwal_level = replica\nmax_wal_senders = 5\n"
                "hot_standby = on\nfsync = off\nfull_page_writes = off\n"
                "wal_receiver_status_interval = 1s\nshared_buffers = 32MB\n"
            )
        pair._pg_ctl("primary", pair.primary_port, "start")
        pair._run("pg_basebackup", "-R", "-X", "stream", "-c", "fast", "-D", str(directory / "replica"),
                  "-h", "127.0.0.1", "-p", str(pair.primary_port), "-U", "postgres")  # fmt: skip
        pair.start_replica()
    except BaseException:
        pair.stop()
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return pair


def stop_pair(pair: PgPair) -> None:
    pair.stop()
    shutil.rmtree(pair.directory, ignore_errors=True)


def wait_replayed(primary: Any, replica: Any, timeout: float = 30.0) -> None:
    """Until the replica has replayed the primary's current WAL position (engines or connections' engines)."""
    from sqlalchemy import text

    with primary.connect() as conn:
        target = conn.scalar(text("SELECT pg_current_wal_insert_lsn()"))
    deadline = time.monotonic() + timeout
    while True:
        with replica.connect() as conn:
            done = conn.scalar(text("SELECT pg_last_wal_replay_lsn() >= CAST(:t AS pg_lsn)"), {"t": str(target)})
        if done:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"replica did not replay up to {target} within {timeout} s")
        time.sleep(0.05)
