"""`lianfang serve`'s ingest as a child process (``alerts.engine: separate``).

The drain is bound by the GIL time of everything that runs in one process (docs/performance.md): ingest's MQTT
receive path, decoder and writer on one side, the alert and joint-control engine on the other. ``serve`` keeps
the engine beside the gateway (the alert, rule and incident endpoints act on the engine's state in memory) and
runs ingest as ``python -m lianfang ingest`` in its own process, which forwards its batches to the engine over
the broker (ingest/forward.py).

The child gets exactly the parent's settings (written 0600 into the private data directory; the broker it uses
is the parent's, with the platform password the parent generated), runs in its own session (a Ctrl-C in the
terminal reaches only ``serve``, which stops ingest first and then the engine) and dies with the parent
(PR_SET_PDEATHSIG). When it exits on its own it is started again, with a growing pause.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr

from core.settings import Settings

logger = logging.getLogger(__name__)

CONFIG_NAME = "ingest-child.yaml"


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, BaseModel):
        return _plain(dict(value))
    return value


def child_settings(settings: Settings) -> dict[str, Any]:
    """The settings document of the child: the parent's, secrets included, on the parent's broker."""
    doc: dict[str, Any] = _plain({name: getattr(settings, name) for name in type(settings).model_fields})
    doc["mqtt"]["embedded_broker"] = False
    doc["alerts"]["engine"] = "separate"
    doc["audit"]["anchor_minutes"] = 0  # serve anchors the audit chain
    return doc


def _die_with_parent() -> None:
    """In the child before exec: the kernel stops it when the thread that started it (and serve) dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class IngestChild:
    """Starts, watches and stops ``lianfang ingest`` for ``lianfang serve``."""

    def __init__(self, settings: Settings, *, stop_timeout_s: float = 45.0, max_backoff_s: float = 30.0) -> None:
        self.settings = settings
        self.stop_timeout_s = stop_timeout_s
        self.max_backoff_s = max_backoff_s
        self.config_path = settings.data_dir / CONFIG_NAME
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watch: threading.Thread | None = None

    def _write_config(self) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yaml.safe_dump(child_settings(self.settings), fh, allow_unicode=True, sort_keys=False)
        tmp.replace(self.config_path)

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIANFANG_")}  # the file is the settings
        # This module as the entry point, not `lianfang ingest`: it does not import the gateway (start-up time).
        cmd = [sys.executable, "-m", "lianfang.ingest_child", str(self.config_path)]
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent)
        logger.info("ingest child started (pid %d)", proc.pid)
        return proc

    def start(self) -> None:
        self._write_config()
        with self._lock:
            self.proc = self._spawn()
        self._watch = threading.Thread(target=self._supervise, name="ingest-child", daemon=True)
        self._watch.start()

    def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            proc = self.proc
            if proc is None:
                return
            started = time.monotonic()
            while proc.poll() is None:
                if self._stopping.wait(0.5):
                    return
            if self._stopping.is_set():
                return
            logger.error(
                "ingest child (pid %d) exited with %s; starting it again in %.0f s", proc.pid, proc.returncode, backoff
            )
            if self._stopping.wait(backoff):
                return
            backoff = 1.0 if time.monotonic() - started > 60 else min(self.max_backoff_s, backoff * 2)
            with self._lock:
                if self._stopping.is_set():
                    return
                self.proc = self._spawn()
                self.restarts += 1

    def alive(self) -> bool:
        proc = self.proc
        return proc is not None and proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM, and wait: ingest writes, forwards and acks what it holds. Returns its exit code."""
        self._stopping.set()
        with self._lock:
            proc = self.proc
        code: int | None = None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                logger.error("ingest child (pid %d) did not stop in %.0f s; killing it", proc.pid, self.stop_timeout_s)
                proc.kill()
                code = proc.wait(10)
        elif proc is not None:
            code = proc.returncode
        if self._watch is not None:
            self._watch.join(5)
        with contextlib.suppress(OSError):
            self.config_path.unlink()
        return code

    def status(self) -> dict[str, Any]:
        proc = self.proc
        return {
            "pid": proc.pid if proc is not None else None,
            "alive": self.alive(),
            "restarts": self.restarts,
        }


def main(argv: list[str] | None = None) -> int:
    """``python -m lianfang.ingest_child CONFIG``: ``lianfang ingest`` with the settings file ``serve`` wrote."""
    from core.logs import setup_logging
    from core.settings import load_settings
    from lianfang.runtime import Runtime
    from lianfang.startup import explain, prepare_data_dir

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m lianfang.ingest_child CONFIG", file=sys.stderr)
        return 2
    settings = load_settings(Path(args[0]))
    setup_logging(settings.log_level)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    runtime = Runtime(settings, with_engine=False)
    try:
        prepare_data_dir(settings)
        runtime.start()
    except Exception as exc:
        runtime.stop()
        line = explain(exc, settings)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1
    logger.info("ingest running as a child of lianfang serve (pid %d); SIGTERM to stop", os.getpid())
    try:
        stop.wait()
    finally:
        runtime.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
