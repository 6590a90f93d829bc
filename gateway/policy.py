"""The security policy the security administrator (secadmin) sets: passwords, lockout, sessions, TOTP, tokens.

Stored in the SQL database (one row, table ``security_policy``, migration 0013), so every process enforces the same
policy, and a change applies at once: logins, password changes, session checks and integration tokens read it on
each use (another process sees a change within :data:`CACHE_SECONDS`). A field left empty (NULL) takes its
default from the settings (``auth.*``, docs/operations.md) or, for the password rules, the built-in minimum; the
API and ``lianfang users policy show`` give the effective value of each field and whether it was set.

Pure checks (:func:`password_problem`) take the policy and do no I/O.
"""

from __future__ import annotations

import string
import threading
import time
import weakref
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Boolean, DateTime, Engine, Integer, String, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.db import Base
from core.errors import StoreUnavailable, UserError
from core.settings import AuthSettings

# The built-in password rules (no policy row): as before the policy existed.
DEFAULT_PASSWORD_MIN = 10
PASSWORD_MIN_FLOOR = 8  # no policy may allow shorter passwords
PASSWORD_MAX = 1024


class SecurityPolicyRow(Base):
    """One row (id 1); NULL: the default."""

    __tablename__ = "security_policy"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    password_min_length: Mapped[int | None] = mapped_column(Integer, nullable=True)
    password_classes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    lockout_failures: Mapped[int | None] = mapped_column(Integer, nullable=True)
    lockout_minutes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    session_idle_minutes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    session_absolute_minutes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    totp_required_for_admins: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    token_max_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_by: Mapped[str | None] = mapped_column(String(200), nullable=True)


# Bounds of each field (inclusive): the API schema, the CLI and save_policy use the same.
BOUNDS: dict[str, tuple[int, int]] = {
    "password_min_length": (PASSWORD_MIN_FLOOR, 128),
    "password_classes": (1, 4),
    "lockout_failures": (1, 100),
    "lockout_minutes": (1, 7 * 24 * 60),
    "session_idle_minutes": (1, 7 * 24 * 60),
    "session_absolute_minutes": (0, 30 * 24 * 60),
    "token_max_days": (1, 3660),
}


@dataclass(frozen=True, slots=True)
class Policy:
    """The effective policy. ``password_classes``: how many of lowercase, uppercase, digits and other characters a
    password must mix; ``session_idle_minutes``: a session ends after this long unused; ``session_absolute_minutes``:
    and this long after login whatever (0: no absolute limit); ``token_max_days``: the longest life of an
    integration token (a token older than this is refused, whatever expiry it was given)."""

    password_min_length: int
    password_classes: int
    lockout_failures: int
    lockout_minutes: int
    session_idle_minutes: int
    session_absolute_minutes: int
    totp_required_for_admins: bool
    token_max_days: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Policy))


def default_policy(auth: AuthSettings | None = None) -> Policy:
    """The policy with no row: the settings' values (``auth.*``) and the built-in password rules."""
    a = auth or AuthSettings()
    return Policy(
        password_min_length=DEFAULT_PASSWORD_MIN,
        password_classes=1,
        lockout_failures=a.lockout_failures,
        lockout_minutes=a.lockout_minutes,
        session_idle_minutes=a.session_minutes,
        # A fixed session (auth.session_sliding false) is one whose absolute limit is its lifetime.
        session_absolute_minutes=0 if a.session_sliding else a.session_minutes,
        totp_required_for_admins=a.totp_required_for_admins,
        token_max_days=BOUNDS["token_max_days"][1],
    )


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    """The effective policy, the fields the security administrator set (the others are defaults), and who set it."""

    policy: Policy
    set_fields: frozenset[str]
    updated_at: datetime | None
    updated_by: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            **self.policy.as_json(),
            "set": sorted(self.set_fields),
            "updated_at": None if self.updated_at is None else self.updated_at.isoformat(),
            "updated_by": self.updated_by,
        }


def _merge(row: SecurityPolicyRow | None, auth: AuthSettings | None) -> StoredPolicy:
    base = default_policy(auth)
    if row is None:
        return StoredPolicy(base, frozenset(), None, None)
    given = {name: getattr(row, name) for name in FIELDS if getattr(row, name) is not None}
    return StoredPolicy(replace(base, **given), frozenset(given), row.updated_at, row.updated_by)


def stored_policy(engine: Engine, auth: AuthSettings | None = None) -> StoredPolicy:
    try:
        with Session(engine) as s:
            return _merge(s.get(SecurityPolicyRow, 1), auth)
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"registry read failed: {exc}") from exc


# Every authenticated request needs the policy: it is read at most once a second per engine (a read costs about
# 2 ms on a loaded machine). A change made in this process clears it at once; other processes see it within
# CACHE_SECONDS.
CACHE_SECONDS = 1.0
_cache: weakref.WeakKeyDictionary[Engine, tuple[float, SecurityPolicyRow | None]] = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def _cached_row(engine: Engine) -> SecurityPolicyRow | None:
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(engine)
    if hit is not None and now - hit[0] < CACHE_SECONDS:
        return hit[1]
    try:
        with Session(engine, expire_on_commit=False) as s:
            row = s.get(SecurityPolicyRow, 1)
            if row is not None:
                s.expunge(row)
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"registry read failed: {exc}") from exc
    with _cache_lock:
        _cache[engine] = (now, row)
    return row


def forget_cached(engine: Engine) -> None:
    with _cache_lock:
        _cache.pop(engine, None)


def load_policy(engine: Engine, auth: AuthSettings | None = None) -> Policy:
    """The effective policy (read at most once a second per engine; see CACHE_SECONDS)."""
    return _merge(_cached_row(engine), auth).policy


def check_value(name: str, value: Any) -> None:
    """UserError for an unknown field or a value out of its bounds (None: back to the default)."""
    if name not in FIELDS:
        raise UserError(f"unknown policy field {name!r}; one of {', '.join(FIELDS)}")
    if value is None:
        return
    if name == "totp_required_for_admins":
        if not isinstance(value, bool):
            raise UserError(f"{name} must be true or false")
        return
    lo, hi = BOUNDS[name]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise UserError(f"{name} must be an integer from {lo} to {hi}")


def save_policy(
    engine: Engine, changes: dict[str, Any], *, now: datetime, by: str, auth: AuthSettings | None = None
) -> StoredPolicy:
    """Set the given fields (None: back to the default) and return the effective policy. Applies at once: open
    login sessions are cut to the new idle and absolute limits."""
    for name, value in changes.items():
        check_value(name, value)
    try:
        with Session(engine, expire_on_commit=False) as s, s.begin():
            row = s.get(SecurityPolicyRow, 1, with_for_update=True)
            if row is None:
                row = SecurityPolicyRow(id=1)
                s.add(row)
            for name, value in changes.items():
                setattr(row, name, value)
            row.updated_at = now
            row.updated_by = by[:200]
            s.flush()
            result = _merge(row, auth)
            _cut_sessions(s, result.policy, now)
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"registry write failed: {exc}") from exc
    finally:
        forget_cached(engine)
    return result


def _cut_sessions(s: Session, policy: Policy, now: datetime) -> None:
    from gateway.auth import ApiSession  # the sessions table; gateway.auth imports this module

    idle_end = now + timedelta(minutes=policy.session_idle_minutes)
    live = (ApiSession.kind == "session", ApiSession.revoked_at.is_(None))
    s.execute(update(ApiSession).where(*live, ApiSession.expires_at > idle_end).values(expires_at=idle_end))
    if policy.session_absolute_minutes:
        # Sessions past their absolute limit end now; authenticate() checks the limit on every use as well.
        limit = timedelta(minutes=policy.session_absolute_minutes)
        s.execute(
            update(ApiSession)
            .where(*live, ApiSession.created_at <= now - limit, ApiSession.expires_at > now)
            .values(expires_at=now)
        )


_CLASSES = (string.ascii_lowercase, string.ascii_uppercase, string.digits)


def character_classes(password: str) -> int:
    """How many of lowercase, uppercase, digits and other characters ``password`` uses."""
    used = [any(c in cls for c in password) for cls in _CLASSES]
    used.append(any(not any(c in cls for cls in _CLASSES) for c in password))
    return sum(used)


def password_problem(password: str, policy: Policy) -> str | None:
    """Why ``password`` breaks the policy, or None."""
    if not policy.password_min_length <= len(password) <= PASSWORD_MAX:
        return f"a password must be {policy.password_min_length} to {PASSWORD_MAX} characters long"
    if character_classes(password) < policy.password_classes:
        return (
            f"a password must mix at least {policy.password_classes} of: lowercase letters, uppercase letters,"
            " digits, other characters"
        )
    return None
