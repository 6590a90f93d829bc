"""Broker SIGKILL with a backlog, as ``broker_sigkill_backlog`` but with the generated persistence defaults
(``autosave_interval 1``): what a crash loses in practice, recovered by resend from devices with a buffer."""

from __future__ import annotations

from faults.scenarios import Ctx, Result
from faults.scenarios.broker_sigkill_backlog import sigkill_with_backlog

NAME = "broker_sigkill_default"
EXPECT = "0 lost of buffered devices; any unbuffered loss counted per device and alerted; 0 duplicated"


def run(ctx: Ctx) -> Result:
    return sigkill_with_backlog(ctx, Result(NAME, EXPECT, ready="n/a"), ctx.broker_overrides(), require_loss=False)
