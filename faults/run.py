"""Runs the fault scenarios and prints one line each: sent / PUBACKed / stored / lost / duplicated, how long until
the fault was visible in /health/ready, /metrics and the alerts, and PASS or FAIL against the expectation.
Exit code 1 when a scenario fails."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import ModuleType

from faults.env import Template, build_template
from faults.scenarios import (
    Ctx,
    Result,
    broker_sigkill_backlog,
    broker_sigkill_default,
    broker_sigterm,
    ingest_sigkill,
    poison,
    queue_overflow,
    store_full,
    store_locked,
)

SCENARIOS: dict[str, ModuleType] = {
    m.NAME: m
    for m in (
        ingest_sigkill,
        broker_sigterm,
        broker_sigkill_backlog,
        broker_sigkill_default,
        store_full,
        store_locked,
        poison,
        queue_overflow,
    )
}


def run_one(name: str, template: Template, root: Path, *, short: bool) -> Result:
    module = SCENARIOS[name]
    started = time.monotonic()
    try:
        res: Result = module.run(Ctx(template, root / name, short))
    except Exception as exc:
        res = Result(name, module.EXPECT, error=f"{type(exc).__name__}: {exc}")
        logging.getLogger(__name__).debug("scenario %s failed:\n%s", name, traceback.format_exc())
        res.error += " | " + traceback.format_exc().strip().splitlines()[-1][:300]
    res.seconds = time.monotonic() - started
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m faults", description=__doc__)
    ap.add_argument("--short", action="store_true", help="short mode (make test): seconds of traffic, not minutes")
    ap.add_argument("--only", default="", help="comma-separated scenario names: " + ", ".join(SCENARIOS))
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, databases)")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario {unknown[0]}; choose from {', '.join(SCENARIOS)}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = Path(tempfile.mkdtemp(prefix="lf-faults-"))
    failed = skipped = 0
    try:
        template = build_template(root / "template")
        for name in names:
            res = run_one(name, template, root, short=args.short)
            print(res.line(), flush=True)
            failed += not res.passed and not res.skipped
            skipped += bool(res.skipped)
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    mode = "short" if args.short else "full"
    print(f"faults: {len(names) - failed - skipped} passed, {failed} failed, {skipped} skipped ({mode} mode)")
    sys.exit(1 if failed else 0)
