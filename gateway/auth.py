"""API users, passwords, sessions, bearer tokens and the principal of a request.

A user has a role (``admin`` alias ``region_admin``, ``operator``, ``viewer``, and the three officers of 三员分立:
``sysadmin``, ``secadmin``, ``auditor``) and a region scope: a region id (the user sees only that
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
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import BigInteger, Boolean, DateTime, Engine, ForeignKey, Integer, String, func, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.db import Base
from core.errors import StoreUnavailable, UserError
from devices.models import Region
from gateway.policy import PASSWORD_MAX, PASSWORD_MIN_FLOOR, load_policy, password_problem

Role = Literal["admin", "operator", "viewer", "sysadmin", "secadmin", "auditor"]
ROLES: tuple[str, ...] = ("admin", "operator", "viewer", "sysadmin", "secadmin", "auditor")
# Names accepted for a role and stored as the canonical one: region_admin is today's scoped admin.
ROLE_ALIASES: dict[str, str] = {"region_admin": "admin"}
# 三员分立: nobody (the same person_id) holds two of these.
OFFICER_ROLES: frozenset[str] = frozenset({"sysadmin", "secadmin", "auditor"})
# Roles that must log in with TOTP when auth.totp_required_for_admins is on.
ADMIN_ROLES: frozenset[str] = frozenset({"admin", "sysadmin", "secadmin"})
# The shortest password any policy allows and the longest; the security policy (gateway/policy.py) sets the
# length and complexity in force.
MIN_PASSWORD = PASSWORD_MIN_FLOOR
MAX_PASSWORD = PASSWORD_MAX
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
    person_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    password_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    totp_secret: Mapped[str | None] = mapped_column(String(64), nullable=True)
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # None: a token made before revision 0011, which never expires (legacy; docs/security.md).
    token_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    token_audited_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ApiSession(Base):
    """A login session (``kind`` session) or an integration token (``kind`` token): only the token's SHA-256."""

    __tablename__ = "api_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("api_users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    audited_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    origin: Mapped[str] = mapped_column(String(200), default="")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking, and which regions they may see (``region_ids`` None: all of them)."""

    name: str
    role: str
    region_id: str | None
    region_ids: frozenset[str] | None
    kind: str = "legacy"  # how they authenticated: legacy (the user's own token), token (integration), session

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


def canonical_role(role: str) -> str:
    """The stored name of a role (``region_admin`` is ``admin``); UserError for an unknown one."""
    role = ROLE_ALIASES.get(role, role)
    if role not in ROLES:
        raise UserError(f"role {role!r} is not one of {', '.join((*ROLES, *ROLE_ALIASES))}")
    return role


def _check_officers(s: Session, person_id: str, role: str, except_user: int | None) -> None:
    """三员分立: refuse a second officer role for the same person."""
    if role not in OFFICER_ROLES:
        return
    q = select(ApiUser.id, ApiUser.name, ApiUser.role).where(
        func.coalesce(ApiUser.person_id, ApiUser.name) == person_id, ApiUser.role.in_(OFFICER_ROLES)
    )
    for other_id, other_name, other_role in s.execute(q):
        if other_role != role and other_id != except_user:
            raise UserError(
                f"person {person_id!r} already holds {other_role} (user {other_name!r}); the system, security"
                f" and audit officers (三员) must be different people"
            )


def check_password(registry_engine: Engine, password: str) -> None:
    """UserError when ``password`` breaks the security policy in force (length, character classes)."""
    problem = password_problem(password, load_policy(registry_engine))
    if problem is not None:
        raise UserError(problem)


def _check_token_life(registry_engine: Engine, now: datetime, expires_at: datetime) -> None:
    days = load_policy(registry_engine).token_max_days
    if expires_at - now > timedelta(days=days):
        raise UserError(f"the security policy allows tokens of at most {days} days")


_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def create_user(
    registry_engine: Engine,
    name: str,
    role: str,
    region_id: str | None,
    now: datetime,
    *,
    password: str | None = None,
    person_id: str | None = None,
    token_expires_at: datetime | None = None,
) -> str:
    """Create an API user and return its token (the only time the token is seen).

    ``region_id`` None gives the user the whole region tree. ``person_id`` names the person (default: the user
    name); one person holds at most one of the three officer roles. Raises UserError for a bad name, role or
    password, an unknown region, a name already taken, or a second officer role of the same person.
    """
    if not USER_NAME_RE.match(name):
        raise UserError(f"user name {name!r} must match {USER_NAME_RE.pattern}")
    role = canonical_role(role)
    if person_id is not None and not USER_NAME_RE.match(person_id):
        raise UserError(f"person id {person_id!r} must match {USER_NAME_RE.pattern}")
    if password is not None:
        check_password(registry_engine, password)
    if token_expires_at is not None:
        _check_token_life(registry_engine, now, token_expires_at)
    token = new_token()
    try:
        with _session(registry_engine) as s, s.begin():
            if region_id is not None and s.get(Region, region_id) is None:
                raise UserError(f"region {region_id!r} does not exist")
            if s.scalar(select(ApiUser.id).where(ApiUser.name == name)) is not None:
                raise UserError(f"user {name!r} already exists")
            _check_officers(s, person_id or name, role, None)
            s.add(
                ApiUser(
                    name=name,
                    role=role,
                    region_id=region_id,
                    token_sha256=hash_token(token),
                    enabled=True,
                    created_at=now,
                    person_id=person_id,
                    password_hash=None if password is None else hash_password(password),
                    password_changed_at=None if password is None else now,
                    failed_logins=0,
                    token_expires_at=token_expires_at,
                )
            )
    except IntegrityError as exc:
        raise UserError(f"user {name!r} already exists") from exc
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"registry write failed: {exc}") from exc
    return token


def update_user(
    registry_engine: Engine,
    name: str,
    *,
    role: str | None = None,
    region_id: str | None = None,
    set_region: bool = False,
    enabled: bool | None = None,
    password: str | None = None,
    now: datetime,
) -> ApiUser:
    """Change a user's role, region (``set_region``: ``region_id`` None is the whole tree), enabled flag or
    password (which also ends the lockout). Raises UserError for no such user, a bad value or 三员 conflict."""
    if role is not None:
        role = canonical_role(role)
    if password is not None:
        check_password(registry_engine, password)
    try:
        with _session(registry_engine) as s, s.begin():
            row = s.scalar(select(ApiUser).where(ApiUser.name == name))
            if row is None:
                raise UserError(f"user {name!r} does not exist")
            if role is not None and role != row.role:
                _check_officers(s, row.person_id or row.name, role, row.id)
                row.role = role
            if set_region:
                if region_id is not None and s.get(Region, region_id) is None:
                    raise UserError(f"region {region_id!r} does not exist")
                row.region_id = region_id
            if enabled is not None:
                row.enabled = enabled
            if password is not None:
                row.password_hash = hash_password(password)
                row.password_changed_at = now
                row.failed_logins = 0
                row.locked_until = None
            return row
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"registry write failed: {exc}") from exc


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


# --- logins, sessions and integration tokens ----------------------------------------------------------------

LoginOutcome = Literal["ok", "denied", "locked", "lockout", "totp_required"]


@dataclass(frozen=True, slots=True)
class LoginResult:
    """``outcome``: ok; denied (wrong name, password or TOTP, or disabled); locked (already locked out);
    lockout (this failure locked the account); totp_required (an administrator without TOTP when it is enforced).
    ``token`` and ``expires_at`` only when ok."""

    outcome: LoginOutcome
    user: str
    role: str | None = None
    token: str | None = None
    expires_at: datetime | None = None


# A hash to verify against when the user does not exist, so a wrong name costs as much as a wrong password.
_DUMMY_HASH = _hasher.hash("lianfang-no-such-user")


def _verify(hash_: str | None, password: str) -> bool:
    try:
        return _hasher.verify(hash_ or _DUMMY_HASH, password) and hash_ is not None
    except (VerificationError, InvalidHashError):
        return False


def login(
    registry_engine: Engine,
    name: str,
    password: str,
    totp: str | None,
    *,
    now: datetime,
    session_minutes: int,
    lockout_failures: int,
    lockout_minutes: int,
    totp_required_for_admins: bool,
    origin: str = "",
    absolute_minutes: int = 0,
) -> LoginResult:
    """Check a name, password and (if the user has one, or it is required) TOTP code; on success open a session.

    ``lockout_failures`` failures in a row lock the account for ``lockout_minutes``; while locked even the right
    password is refused. A success resets the counter. The session ends ``session_minutes`` after login (moved on
    by each use when sliding) and never later than ``absolute_minutes`` after login (0: no such limit).
    """
    try:
        with _session(registry_engine) as s, s.begin():
            row = s.scalar(select(ApiUser).where(ApiUser.name == name).with_for_update())
            if row is None:
                _verify(None, password)
                return LoginResult("denied", name)
            if row.locked_until is not None and _aware(row.locked_until) > now:
                return LoginResult("locked", name, row.role)
            ok = _verify(row.password_hash, password) and row.enabled
            if ok and row.totp_secret is not None:
                step = totp_step(row.totp_secret, totp, now)
                ok = step is not None and (row.totp_last_step is None or step > row.totp_last_step)
                if ok:
                    row.totp_last_step = step
            if not ok:
                row.failed_logins = (row.failed_logins or 0) + 1
                if row.failed_logins >= lockout_failures:
                    row.failed_logins = 0
                    row.locked_until = now + timedelta(minutes=lockout_minutes)
                    return LoginResult("lockout", name, row.role)
                return LoginResult("denied", name, row.role)
            row.failed_logins = 0
            row.locked_until = None
            if totp_required_for_admins and row.role in ADMIN_ROLES and row.totp_secret is None:
                return LoginResult("totp_required", name, row.role)
            token = new_token()
            expires = now + timedelta(minutes=session_minutes)
            if absolute_minutes:
                expires = min(expires, now + timedelta(minutes=absolute_minutes))
            s.add(
                ApiSession(
                    user_id=row.id,
                    kind="session",
                    token_sha256=hash_token(token),
                    created_at=now,
                    expires_at=expires,
                    origin=origin[:200],
                )
            )
            return LoginResult("ok", name, row.role, token, expires)
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"registry write failed: {exc}") from exc


def totp_step(secret: str, code: str | None, now: datetime) -> int | None:
    """The 30 s step (now, or one either side for clock drift) whose code this is, or None."""
    if code is None:
        return None
    totp = pyotp.TOTP(secret)
    here = totp.timecode(now)
    for step in (here, here - 1, here + 1):
        if secrets.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def enable_totp(registry_engine: Engine, name: str) -> str:
    """Give a user a new TOTP secret (base32) and return it, once, for their authenticator app."""
    secret = pyotp.random_base32()
    try:
        with _session(registry_engine) as s, s.begin():
            row = s.scalar(select(ApiUser).where(ApiUser.name == name))
            if row is None:
                raise UserError(f"user {name!r} does not exist")
            row.totp_secret = secret
            row.totp_last_step = None
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"registry write failed: {exc}") from exc
    return secret


def issue_token(registry_engine: Engine, name: str, *, now: datetime, expires_days: int) -> tuple[int, str, datetime]:
    """A new integration token for a user: (its id, the token — shown once, its expiry)."""
    if not 1 <= expires_days <= 3660:
        raise UserError("--expires-days must be between 1 and 3660")
    token = new_token()
    expires = now + timedelta(days=expires_days)
    _check_token_life(registry_engine, now, expires)
    try:
        with _session(registry_engine) as s, s.begin():
            row = s.scalar(select(ApiUser).where(ApiUser.name == name))
            if row is None:
                raise UserError(f"user {name!r} does not exist")
            sess = ApiSession(
                user_id=row.id, kind="token", token_sha256=hash_token(token), created_at=now, expires_at=expires
            )
            s.add(sess)
            s.flush()
            return sess.id, token, expires
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"registry write failed: {exc}") from exc


def revoke_tokens(
    registry_engine: Engine, name: str, *, now: datetime, token_id: int | None = None, legacy: bool = False
) -> int:
    """Revoke one integration token (``token_id``), or all of the user's tokens and sessions; ``legacy`` also
    ends the token made with the user (by expiring it now). Returns how many were revoked."""
    try:
        with _session(registry_engine) as s, s.begin():
            row = s.scalar(select(ApiUser).where(ApiUser.name == name))
            if row is None:
                raise UserError(f"user {name!r} does not exist")
            q = update(ApiSession).where(ApiSession.user_id == row.id, ApiSession.revoked_at.is_(None))
            if token_id is not None:
                q = q.where(ApiSession.id == token_id)
            res: CursorResult[Any] = s.execute(q.values(revoked_at=now))  # type: ignore[assignment]
            n = res.rowcount or 0
            if token_id is not None and n == 0:
                raise UserError(f"user {name!r} has no active token {token_id}")
            if legacy and (row.token_expires_at is None or _aware(row.token_expires_at) > now):
                row.token_expires_at = now
                n += 1
            return int(n)
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"registry write failed: {exc}") from exc


def end_session(registry_engine: Engine, token: str, *, now: datetime) -> bool:
    """Revoke the login session of this token; False if it is not a live login session."""
    digest = hash_token(token)
    try:
        with _session(registry_engine) as s, s.begin():
            q = update(ApiSession).where(
                ApiSession.token_sha256 == digest, ApiSession.kind == "session", ApiSession.revoked_at.is_(None)
            )
            res: CursorResult[Any] = s.execute(q.values(revoked_at=now))  # type: ignore[assignment]
            return bool(res.rowcount)
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"registry write failed: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Authenticated:
    """A valid bearer token's user; ``kind``: legacy (the user's own token), token (integration) or session.
    ``audit_due``: an integration token's use that should be written to the audit log now."""

    user: ApiUser
    kind: str
    audit_due: bool


def _aware(t: datetime) -> datetime:
    """SQLite gives naive datetimes back; they were stored as UTC."""
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def authenticate(
    registry_engine: Engine,
    token: str,
    *,
    now: datetime,
    session_minutes: int,
    sliding: bool,
    audit_every: timedelta,
    absolute_minutes: int = 0,
    token_max_days: int | None = None,
) -> Authenticated | None:
    """The enabled user of a live token (legacy, integration or session), or None: unknown, forged, expired,
    revoked, or the user disabled. Slides a session's expiry when ``sliding``, never past ``absolute_minutes``
    after login (0: no limit); an integration token older than ``token_max_days`` is refused (the security
    policy, checked on each use so a stricter policy applies at once)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    digest = hash_token(token)
    try:
        with _session(registry_engine) as s, s.begin():
            row = s.scalar(select(ApiUser).where(ApiUser.token_sha256 == digest))
            if row is not None:
                if row.token_expires_at is not None and _aware(row.token_expires_at) <= now:
                    return None
                kind, audit_due = "legacy", False
                if row.token_expires_at is not None and (
                    row.token_audited_at is None or now - _aware(row.token_audited_at) >= audit_every
                ):
                    row.token_audited_at = now
                    audit_due = True
            else:
                sess = s.scalar(select(ApiSession).where(ApiSession.token_sha256 == digest))
                if sess is None or sess.revoked_at is not None or _aware(sess.expires_at) <= now:
                    return None
                born = _aware(sess.created_at)
                if sess.kind == "session" and absolute_minutes and now >= born + timedelta(minutes=absolute_minutes):
                    return None
                if sess.kind == "token" and token_max_days is not None and now >= born + timedelta(days=token_max_days):
                    return None
                row = s.get(ApiUser, sess.user_id)
                if row is None:
                    return None
                kind, audit_due = sess.kind, False
                if sess.kind == "session" and sliding:
                    new_expiry = now + timedelta(minutes=session_minutes)
                    if absolute_minutes:
                        new_expiry = min(new_expiry, born + timedelta(minutes=absolute_minutes))
                    if new_expiry - _aware(sess.expires_at) >= timedelta(seconds=30):
                        sess.expires_at = new_expiry
                elif sess.kind == "token" and (sess.audited_at is None or now - _aware(sess.audited_at) >= audit_every):
                    sess.audited_at = now
                    audit_due = True
            # A lockout stops logins, not the sessions already open (else guessing would log the owner out).
            if not row.enabled:
                return None
            return Authenticated(row, kind, audit_due)
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"registry read failed: {exc}") from exc
