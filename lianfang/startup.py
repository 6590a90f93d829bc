"""Start-up of the long-running commands (`serve`, `ingest`, `demo`): the data directory checked and kept private,
and the known failure classes turned into one line that says what to do, with exit code 1.

Known classes: bad settings, the data directory (or a database's directory) not writable, a port in use (MQTT or
API), the embedded broker failing to start or refusing the platform, a database locked by another process or
unreachable. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import socket
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ParamSpec

import typer
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from core.errors import BrokerUnavailable, StoreUnavailable, UserError
from core.fsperm import loose, private_dir, sqlite_files
from core.logs import setup_logging
from core.settings import Settings
from lianfang.context import settings_from

logger = logging.getLogger(__name__)

P = ParamSpec("P")


def sqlite_db_path(settings: Settings) -> Path | None:
    """The registry's SQLite file, or None for another database."""
    url = settings.database_url
    if not url.startswith("sqlite") or "///" not in url:
        return None
    path = url.split("///", 1)[1].split("?", 1)[0]
    return None if not path or path == ":memory:" or path.startswith("file:") else Path(path)


def _dirs(settings: Settings) -> list[Path]:
    """The directories Lianfang writes to, data dir first, each once."""
    out = [settings.data_dir, settings.store.sqlite_path.parent]
    db = sqlite_db_path(settings)
    if db is not None:
        out.append(db.parent)
    if settings.mqtt.embedded_broker:
        out.append(settings.mqtt.broker_dir.parent)
    return list(dict.fromkeys(out))


def prepare_data_dir(settings: Settings) -> None:
    """Create the data directory 0700 if absent and prove every directory we write to is writable.

    Raises UserError naming the directory and the remedy."""
    for d in _dirs(settings):
        probe = d / f".lianfang-write-test-{os.getpid()}"
        try:
            private_dir(d)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise UserError(
                f"cannot write to the data directory {d} ({reason}): make it a directory the user running Lianfang "
                "can write to, or choose another with LIANFANG_DATA_DIR"
            ) from exc


def private_paths(settings: Settings) -> list[Path]:
    """What must stay private: the data, broker and certificate directories, the databases with their WAL files,
    and the broker's generated passwords."""
    paths = [settings.data_dir]
    if settings.mqtt.embedded_broker:
        paths += [settings.mqtt.broker_dir, settings.mqtt.broker_dir.parent / "broker-secrets.json"]
    if settings.mqtt.tls_dir is not None:
        paths.append(settings.mqtt.tls_dir)
    paths += sqlite_files(settings.store.sqlite_path)
    db = sqlite_db_path(settings)
    if db is not None:
        paths += sqlite_files(db)
    return list(dict.fromkeys(paths))


def warn_loose_permissions(settings: Settings) -> list[Path]:
    """Log one warning per private path that other local users may read; returns those paths."""
    found = loose(private_paths(settings))
    for path, mode in found:
        want = "700" if path.is_dir() else "600"
        logger.warning(
            "%s has mode %03o: other local users can read it (secret and token hashes, audit, raw payloads); "
            "run: chmod %s %s",
            path,
            mode,
            want,
            path,
        )
    return [p for p, _ in found]


def check_api_port(host: str, port: int) -> None:
    """UserError if the API's address is taken (checked before anything starts)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(
                    f"port {port} on {host} is already in use (another Lianfang serve or demo still running?): stop "
                    "it or choose another port with --port or LIANFANG_API__PORT"
                ) from exc
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}): check api.host / api.port") from exc


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparseable URL)"


def explain(exc: BaseException, settings: Settings) -> str | None:
    """One line with the remedy for a known start-up failure, or None for an unexpected one."""
    if any("database is locked" in str(e) for e in _chain(exc)):
        return (
            "a database is locked by another process (another Lianfang serve, ingest or demo on the same data "
            f"directory {settings.data_dir}?): stop it, or use another LIANFANG_DATA_DIR"
        )
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, BrokerUnavailable):
        text = str(exc)
        if "did not start" in text:
            conf = settings.mqtt.broker_dir / "mosquitto.conf"
            return f"{text}: run 'mosquitto -c {conf}' to see why, or move {settings.mqtt.broker_dir} aside"
        if "already in use" in text:
            return text
        if "Not authorized" in text or "Bad user name or password" in text:
            secrets = settings.mqtt.broker_dir.parent / "broker-secrets.json"
            return (
                f"{text}: the broker's files in {settings.mqtt.broker_dir} do not match {secrets}; put back the "
                "broker-secrets.json that belongs to them, or move the broker directory aside (it is re-created "
                "without device identities: then run 'lianfang devices reconcile --reprovision-missing')"
            )
        return f"{text}: start the broker or check mqtt.host / mqtt.port (LIANFANG_MQTT__HOST, LIANFANG_MQTT__PORT)"
    if isinstance(exc, StoreUnavailable):
        return f"{exc}: check that the disk of {settings.store.sqlite_path} is writable and has free space"
    if isinstance(exc, (DBAPIError, sqlite3.Error)):
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return (
            f"cannot use the database {_safe_url(settings.database_url)}: {detail}: check database_url "
            "(LIANFANG_DATABASE_URL) and that the database server is running"
        )
    if isinstance(exc, ArgumentError):
        return f"database_url {settings.database_url!r} is not a database URL: {exc}"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC):
        where = exc.filename or settings.data_dir
        return (
            f"cannot write {where} ({exc.strerror}): give the user running Lianfang write access to the data "
            f"directory {settings.data_dir} and free disk space, or choose another with LIANFANG_DATA_DIR"
        )
    return None


def long_running(command: Callable[P, None]) -> Callable[P, None]:
    """Wrap `serve`, `ingest` or `demo`: settings, logging, the data directory prepared and checked, and a known
    failure printed as one line ``error: ...`` with exit code 1 instead of a traceback."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        ctx = kwargs.get("ctx", args[0] if args else None)  # typer passes a click Context, not a typer.Context
        assert ctx is not None, "long_running commands take ctx first"
        settings = settings_from(ctx)  # type: ignore[arg-type]  # bad settings: one line, exit 1
        setup_logging(settings.log_level)
        try:
            prepare_data_dir(settings)
            warn_loose_permissions(settings)
            command(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            line = explain(exc, settings)
            if line is None:
                raise
            one = " | ".join(part.strip() for part in line.splitlines() if part.strip())
            typer.echo(f"error: {one}", err=True)
            raise typer.Exit(1) from exc

    return run
