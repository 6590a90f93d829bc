"""What the edit endpoints of alert rules (gateway/routes/rules.py) and correlation patterns
(gateway/routes/patterns.py) answer alike: the 201 / 200 of a PUT, a 422 naming where in the request a problem is,
a 409 for a conflict, the whole-tree-admin guard, the id of a definition taken from the path, and who made an
edit and when. The stores behind them are ``alerts.spec_admin``'s.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

from fastapi import HTTPException, Response, status
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from alerts.spec_admin import SpecConflict, SpecRejected
from gateway.auth import Principal
from gateway.params import finite_json, iso_at

# A PUT answers 201 when it creates and 200 when it replaces; both carry the object.
CREATED: dict[int | str, dict[str, Any]] = {
    201: {"description": "created (200: replaced)", "content": {"application/json": {"schema": {"type": "object"}}}}
}


class Body(BaseModel):
    """A request body: unknown fields are a 422."""

    model_config = ConfigDict(extra="forbid")


class FiniteParams(Body):
    """An override body whose ``params`` (a field of the subclass) must hold finite numbers only (``Infinity``,
    ``NaN``, ``1e999``: 422)."""

    @field_validator("params", check_fields=False)
    @classmethod
    def _finite(cls, v: dict[str, Any]) -> dict[str, Any]:
        return cast(dict[str, Any], finite_json(v))


def bad(loc: list[str], msg: str) -> HTTPException:
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT, detail=[{"loc": loc, "msg": msg, "type": "value_error"}]
    )


def whole_tree_admin(principal: Principal, what: str) -> None:
    """403 unless the caller is an admin of the whole tree; ``what``: the detail's subject and verb."""
    if principal.role != "admin" or principal.region_ids is not None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"{what} an admin of the whole tree")


def answered(response: Response, created: bool) -> None:
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK


class _Edit(Protocol):
    @property
    def created_by(self) -> str: ...
    @property
    def created_at(self) -> Any: ...
    @property
    def updated_by(self) -> str: ...
    @property
    def updated_at(self) -> Any: ...


def edited_json(o: _Edit) -> dict[str, Any]:
    """Who made an API edit and who changed it last, and when."""
    return {
        "created_by": o.created_by,
        "created_at": iso_at(o.created_at),
        "updated_by": o.updated_by,
        "updated_at": iso_at(o.updated_at),
    }


S = TypeVar("S", bound=BaseModel)


@dataclass(frozen=True)
class SpecAnswers:
    """How a spec type's edits are answered: ``id_param`` is the path parameter of its id (``id_names``: the
    message's names for it), ``query_fields`` the scope's query parameters, ``sections`` the spec file sections
    a message's field path may start with (left out of the body's loc)."""

    id_param: str
    id_names: tuple[str, ...]
    query_fields: frozenset[str]
    sections: tuple[str, ...] = ()
    api_origin: str = "api"

    def rejected(self, exc: SpecRejected) -> HTTPException:
        """422 with one entry per problem: the spec files' message, and where in the request it points."""
        detail = []
        for line in str(exc).splitlines():
            rest = line.removeprefix(f"{exc.origin}: ")
            path = rest.split(": ", 1)[0] if rest != line else ""
            # rules[3].params.required[0].event -> ["params", "required", 0, "event"] (list indexes as FastAPI's loc)
            parts: list[str | int] = [
                int(p) if p.isdigit() else p for p in path.replace("[", ".").replace("]", "").split(".") if p
            ]
            if parts and parts[0] in self.sections:
                parts = parts[2:]
            if parts and parts[0] in self.query_fields:
                loc: list[str | int] = ["query", parts[0]]
            elif parts and parts[0] in self.id_names:
                loc = ["path", self.id_param]
            else:
                loc = ["body", *parts]
            detail.append({"loc": loc, "msg": line, "type": "value_error"})
        return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)

    @contextmanager
    def errors(self) -> Iterator[None]:
        """A rejected write is a 422 (``rejected``), a conflicting one a 409."""
        try:
            yield
        except SpecRejected as exc:
            raise self.rejected(exc) from exc
        except SpecConflict as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc

    def spec(self, spec_type: type[S], body: BaseModel, spec_id: str) -> S:
        """The definition of a PUT: the body with the id of the path (an other id in the body is a 422)."""
        body_id = getattr(body, "id", None)
        if body_id is not None and body_id != spec_id:
            raise bad(["body", "id"], f"the id in the body ({body_id!r}) is not the id in the path ({spec_id!r})")
        try:
            return spec_type.model_validate({**body.model_dump(exclude={"id"}), "id": spec_id})
        except ValidationError as exc:
            raise bad(["path", self.id_param], f"{self.api_origin}: id: {exc.errors()[0]['msg']}") from exc
