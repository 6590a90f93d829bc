"""A small InfluxQL query interface on ``/query`` (InfluxDB 1.x, InfluxDB 2 through a DBRP mapping, InfluxDB 3).

Only what the telemetry-store adapter (``core.store.influx``) and ``lianfang store check`` need: one GET per
query with ``epoch=ms``, the answer turned into :class:`Series` at once. Identifiers and string literals are quoted
here (:func:`ident`, :func:`literal`), never pasted raw. An unreachable server, a 5xx or an authentication failure
is ``StoreUnavailable``; an error in the statement itself is :class:`QueryError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from core.errors import LianfangError, StoreUnavailable


class QueryError(LianfangError):
    """The server answered, but refused the statement (bad syntax, unknown function)."""


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    columns: list[str]
    values: list[list[Any]]
    tags: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, v, strict=False)) for v in self.values]


def ident(name: str) -> str:
    """A double-quoted InfluxQL identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def literal(value: str) -> str:
    """A single-quoted InfluxQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class InfluxQL:
    """Queries one database (InfluxDB 1.x database, InfluxDB 2 DBRP mapping name, InfluxDB 3 database)."""

    def __init__(
        self,
        url: str,
        database: str,
        *,
        token: str | None = None,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Token {token}"
        self.database = database
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s, transport=transport)

    def query(self, q: str, *, database: str | None = None) -> list[Series]:
        """Run one or more statements (``;``-separated); the series of all of them, in order."""
        params = {"db": database if database is not None else self.database, "q": q, "epoch": "ms"}
        try:
            resp = self._http.get("/query", params=params)
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"InfluxDB query failed: {type(exc).__name__}: {exc}") from exc
        if resp.status_code in (401, 403) or resp.status_code >= 500:
            raise StoreUnavailable(f"InfluxDB query failed: HTTP {resp.status_code}: {resp.text[:300]}")
        try:
            body: Any = resp.json()
        except ValueError as exc:
            raise QueryError(f"InfluxDB answered HTTP {resp.status_code} with no JSON: {resp.text[:300]}") from exc
        if not isinstance(body, dict):
            raise QueryError(f"unexpected InfluxQL answer: {str(body)[:300]}")
        if "error" in body:
            raise QueryError(str(body["error"]))
        out: list[Series] = []
        for result in body.get("results", []):
            if "error" in result:
                raise QueryError(str(result["error"]))
            for s in result.get("series", []):
                out.append(
                    Series(
                        str(s.get("name", "")),
                        [str(c) for c in s.get("columns", [])],
                        [list(v) for v in s.get("values", [])],
                        {str(k): str(v) for k, v in (s.get("tags") or {}).items()},
                    )
                )
        return out

    def ping(self) -> bool:
        try:
            resp = self._http.get("/ping")
        except httpx.HTTPError:
            return False
        return resp.status_code < 300

    def close(self) -> None:
        self._http.close()
