"""API users, bearer tokens and the principal of a request.

A user has a role (``admin``, ``operator``, ``viewer``) and a region scope: a region id (the user sees only that
region's subtree) or ``None`` (the whole tree). Tokens are random, shown once by ``create_user`` and stored only as
their SHA-256 hash, so a leaked database does not leak working tokens. Every object outside the principal's subtree
is answered as if it did not exist (404), so a scoped user cannot probe for other regions' devices.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import Boolean, DateTime, Engine, ForeignKey, Integer, String, func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.db import Base
from core.errors import StoreUnavailable, UserError
from devices.models import Region

Role = Literal["admin", "operator", "viewer"]
ROLES: tuple[str, ...] = ("admin", "operator", "viewer")
USER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
TOKEN_PREFIX = "lf_"


class ApiUser(Base):
    __tablename__ = "api_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    region_id: Mapped[str | None] = mapped_column(ForeignKey("regions.id"), nullable=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking, and which regions they may see (``region_ids`` None: all of them)."""

    name: str
    role: str
    region_id: str | None
    region_ids: frozenset[str] | None

    def sees_region(self, region_id: str) -> bool:
        return self.region_ids is None or region_id in self.region_ids

    def sees_scope(
        self, region_id: str | None, device_id: str | None, device_region: Callable[[str], str | None]
    ) -> bool:
        """Whether something scoped to a region, a device or (neither) the whole tree is visible: scoped callers
        see what lies inside their subtree and the tree-wide things, which apply to them too."""
        if self.region_ids is None:
            return True
        if region_id is not None:
            return region_id in self.region_ids
        if device_id is not None:
            where = device_region(device_id)
            return where is not None and where in self.region_ids
        return True


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)


def create_user(registry_engine: Engine, name: str, role: str, region_id: str | None, now: datetime) -> str:
    """Create an API user and return its token (the only time the token is seen).

    ``region_id`` None gives the user the whole region tree. Raises UserError for a bad name or role, an unknown
    region, or a name already taken.
    """
    if not USER_NAME_RE.match(name):
        raise UserError(f"user name {name!r} must match {USER_NAME_RE.pattern}")
    if role not in ROLES:
        raise UserError(f"role {role!r} is not one of {', '.join(ROLES)}")
    token = new_token()
    try:
        with _session(registry_engine) as s, s.begin():
            if region_id is not None and s.get(Region, region_id) is None:
                raise UserError(f"region {region_id!r} does not exist")
            if s.scalar(select(ApiUser.id).where(ApiUser.name == name)) is not None:
                raise UserError(f"user {name!r} already exists")
            s.add(
                ApiUser(
                    name=name,
                    role=role,
                    region_id=region_id,
                    token_sha256=hash_token(token),
                    enabled=True,
                    created_at=now,
                )
            )
    except IntegrityError as exc:
        raise UserError(f"user {name!r} already exists") from exc
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"registry write failed: {exc}") from exc
    return token


def list_users(registry_engine: Engine) -> list[ApiUser]:
    try:
        with _session(registry_engine) as s:
            return list(s.scalars(select(ApiUser).order_by(ApiUser.name)))
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"registry read failed: {exc}") from exc


def set_user_enabled(registry_engine: Engine, name: str, enabled: bool) -> None:
    """Disable (revoke) or re-enable a user; raises UserError if there is no such user."""
    try:
        with _session(registry_engine) as s, s.begin():
            row = s.scalar(select(ApiUser).where(ApiUser.name == name))
            if row is None:
                raise UserError(f"user {name!r} does not exist")
            row.enabled = enabled
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"registry write failed: {exc}") from exc


def user_by_name(registry_engine: Engine, name: str) -> ApiUser | None:
    """The user of that name (enabled or not), or None."""
    try:
        with _session(registry_engine) as s:
            return s.scalar(select(ApiUser).where(ApiUser.name == name))
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"registry read failed: {exc}") from exc


def any_users(registry_engine: Engine) -> bool:
    try:
        with _session(registry_engine) as s:
            return (s.scalar(select(func.count()).select_from(ApiUser)) or 0) > 0
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"registry read failed: {exc}") from exc


def find_user(registry_engine: Engine, token: str) -> ApiUser | None:
    """The enabled user holding this token, or None. Compares hashes only."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    digest = hash_token(token)
    try:
        with _session(registry_engine) as s:
            row = s.scalar(select(ApiUser).where(ApiUser.token_sha256 == digest))
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"registry read failed: {exc}") from exc
    if row is None or not row.enabled or not secrets.compare_digest(row.token_sha256, digest):
        return None
    return row
