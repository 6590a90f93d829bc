"""CONVENTIONS.md 16: the package CLIs take their context from the root command (ctx.obj), never from the
composition root (``lianfang/``); run without the root they say so."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import users_app

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_CLIS = [
    "devices/cli.py",
    "devices/cli_security.py",
    "devices/cli_context.py",
    "alerts/cli.py",
    "gateway/cli.py",
    "joint/cli.py",
]


@pytest.mark.parametrize("path", PACKAGE_CLIS)
def test_a_package_cli_never_imports_the_composition_root(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    imported = [
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in (n.names if isinstance(n, ast.Import) else [n])  # type: ignore[attr-defined]
    ]
    assert not [m for m in imported if m and (m == "lianfang" or m.startswith("lianfang."))], imported


def test_a_sub_app_run_without_the_root_says_so() -> None:
    result = CliRunner().invoke(users_app, ["list"])
    assert result.exit_code != 0
    assert isinstance(result.exception, RuntimeError)
    assert "through the `lianfang` root command" in str(result.exception)
