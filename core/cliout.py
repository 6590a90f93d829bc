"""Command output for people and for scripts.

On a terminal, tables are drawn by rich at the terminal's width. Without one (a pipe, a file, a test's CliRunner),
nothing is cut or wrapped to 80 columns: a table becomes plain tab-separated lines (a header line, then one line
per row) and other rich output has no width cap and no colour. Titles and paging hints go to stderr then, so
stdout carries only the data. ``--json`` output is separate from this (each command prints its own JSON).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import TextIO

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

# The width rich gets without a terminal: no line of ours is this long, so nothing is cut or wrapped.
UNLIMITED = 1_000_000

Cell = str | Text


def is_terminal(stream: TextIO | None = None) -> bool:
    s = stream if stream is not None else sys.stdout
    try:
        return s.isatty()
    except (AttributeError, ValueError):
        return False


def console(*, stderr: bool = False) -> Console:
    """A rich Console: the terminal's width on a terminal; otherwise unlimited width, no colour, no wrapping."""
    if is_terminal(sys.stderr if stderr else sys.stdout):
        return Console(highlight=False, stderr=stderr)
    return Console(highlight=False, stderr=stderr, width=UNLIMITED, no_color=True, soft_wrap=True)


def plain(cell: Cell) -> str:
    """A cell as one TSV field: its text, tabs and line breaks made spaces."""
    text = cell.plain if isinstance(cell, Text) else cell
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def print_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Cell]],
    *,
    title: str | None = None,
    show_header: bool = True,
    key_column: bool = False,
) -> None:
    """A table on stdout: rich on a terminal, else TSV (title on stderr). Plain ``str`` cells are shown as they
    are (never read as rich markup); pass a ``Text`` for style. ``key_column``: the first column in bold (a
    key/value view such as `devices show`)."""
    if not is_terminal():
        if title:
            typer.echo(title, err=True)
        if show_header:
            typer.echo("\t".join(headers))
        for row in rows:
            typer.echo("\t".join(plain(c) for c in row))
        return
    table = Table(title=title, show_header=show_header, box=None if key_column else box.HEAVY_HEAD)
    for i, h in enumerate(headers):
        table.add_column(h, style="bold" if key_column and i == 0 else None)
    for row in rows:
        table.add_row(*(c if isinstance(c, Text) else Text(c) for c in row))
    console().print(table)


def note(message: str) -> None:
    """A line for the person (a summary, a paging hint): stdout on a terminal, stderr otherwise (stdout is data)."""
    typer.echo(message, err=not is_terminal())
