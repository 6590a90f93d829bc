"""Report kind -> builder, imported lazily: a builder that is not installed (or fails to import) is a clear
"not available" error when that report is asked for, never an ImportError when the CLI or the API starts.

A builder module exposes ``build(source, request) -> Report`` (reports/model.py ``ReportBuilder``).
"""

from __future__ import annotations

import importlib
from typing import cast

from core.errors import UserError
from reports.model import REPORT_KINDS, Report, ReportBuilder, ReportKind, ReportRequest, ReportSource

BUILDERS: dict[ReportKind, str] = {
    "vehicles": "reports.vehicles:build",
    "energy": "reports.energy:build",
    "coverage": "reports.coverage:build",
    "scorecard": "reports.scorecard:build",
}


class ReportNotAvailable(UserError):
    """The report kind is unknown or its builder cannot be loaded."""


def builder_for(kind: str) -> ReportBuilder:
    """The builder of ``kind``; ReportNotAvailable naming why when there is none."""
    if kind not in BUILDERS:
        raise ReportNotAvailable(f"unknown report kind {kind!r}: one of {', '.join(REPORT_KINDS)}")
    target = BUILDERS[kind]
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ReportNotAvailable(f"report {kind!r} is not available: {module_name} cannot be imported ({exc})") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ReportNotAvailable(f"report {kind!r} is not available: {target} is not defined")
    return cast(ReportBuilder, fn)


def available() -> dict[ReportKind, bool]:
    """Which report kinds can be built here."""
    out: dict[ReportKind, bool] = {}
    for kind in REPORT_KINDS:
        try:
            builder_for(kind)
        except ReportNotAvailable:
            out[kind] = False
        else:
            out[kind] = True
    return out


def build_report(source: ReportSource, request: ReportRequest) -> Report:
    """Build the report ``request.kind`` asks for."""
    return builder_for(request.kind)(source, request)
