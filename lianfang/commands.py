"""Registers every package's commands on the root app (imported by lianfang.cli.main)."""

from __future__ import annotations


# Each package owns its commands; add one line per sub-app here.
