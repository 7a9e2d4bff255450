"""Inspector accounts, password checks and server-side web sessions (no web framework here).

Passwords are hashed with Argon2id (argon2-cffi's defaults, rehashed on sign-in when those
defaults grow). A session is a random token held by the browser in an HttpOnly cookie; the
database keeps only its sha256, so a leaked database does not leak live sessions. Each
session carries its own CSRF token, which every form posts back.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select

from lineqc.errors import LineqcError

from .store import Store, User, WebSession

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
MAX_NAME = 100
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # Argon2 hashes any length; this only bounds the work per request
SESSION_TTL_S = 12 * 3600.0  # one shift and some

_HASHER = PasswordHasher()  # Argon2id


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user does not exist, so that a wrong name costs as much
    time as a wrong password and the response time does not tell which accounts exist."""
    return _HASHER.hash(secrets.token_urlsafe(16))


class AccountError(LineqcError):
    """An account name or password that cannot be used; the message says why."""


@dataclass(frozen=True)
class SignedIn:
    """Who a request acts for: always from the session, never from the request's form."""

    user_id: int
    name: str
    is_admin: bool
    csrf: str


def validate_name(name: str) -> str:
    if not NAME_RE.fullmatch(name) or len(name) > MAX_NAME:
        raise AccountError(
            f"user name {name[:MAX_NAME]!r}: use letters, digits, '_', '.' or '-', starting "
            f"with a letter or digit, at most {MAX_NAME} characters"
        )
    return name


def validate_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"password too short: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"password too long: at most {MAX_PASSWORD} characters")
    return password


def add_user(store: Store, name: str, password: str, admin: bool = False) -> bool:
    """Create an account (True) or reset an existing one's password and role (False).

    Resetting a password also ends that user's open sessions.
    """
    validate_name(name)
    digest = _HASHER.hash(validate_password(password))
    with store.session() as s:
        user = s.scalar(select(User).where(User.name == name))
        if user is None:
            s.add(User(name=name, password_hash=digest, is_admin=admin, created_at=time.time()))
            return True
        user.password_hash = digest
        user.is_admin = admin
        s.execute(delete(WebSession).where(WebSession.user_id == user.id))
        return False


def authenticate(store: Store, name: str, password: str) -> int | None:
    """The user id when the name and password match; None otherwise (same cost either way)."""
    if len(password) > MAX_PASSWORD:
        return None
    with store.session() as s:
        user = s.scalar(select(User).where(User.name == name)) if NAME_RE.fullmatch(name) else None
        try:
            _HASHER.verify(user.password_hash if user else _dummy_hash(), password)
        except (VerificationError, InvalidHashError):
            return None
        if user is None:
            return None
        if _HASHER.check_needs_rehash(user.password_hash):
            user.password_hash = _HASHER.hash(password)
        return user.id


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def start_session(store: Store, user_id: int, ttl_s: float = SESSION_TTL_S) -> str:
    """A new session for the user; returns the token for the cookie (stored only hashed)."""
    now = time.time()
    with store.session() as s:
        s.execute(delete(WebSession).where(WebSession.expires_at < now))
        token = new_token()
        s.add(
            WebSession(
                token_sha256=_token_digest(token),
                user_id=user_id,
                csrf=new_token(),
                created_at=now,
                expires_at=now + ttl_s,
            )
        )
    return token


def session_user(store: Store, token: str | None) -> SignedIn | None:
    """The signed-in user of a cookie's token; None for a missing, unknown or expired one."""
    if not token or len(token) > 200:
        return None
    with store.session() as s:
        row = s.get(WebSession, _token_digest(token))
        if row is None:
            return None
        if row.expires_at < time.time():
            s.delete(row)
            return None
        user = s.get(User, row.user_id)
        if user is None:
            return None
        return SignedIn(user.id, user.name, user.is_admin, row.csrf)


def end_session(store: Store, token: str) -> None:
    with store.session() as s:
        s.execute(delete(WebSession).where(WebSession.token_sha256 == _token_digest(token)))


def same_token(expected: str, given: str | None) -> bool:
    """Constant-time comparison of a CSRF token (an empty or missing one never matches)."""
    if not expected or given is None:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())  # bytes: any input is safe
