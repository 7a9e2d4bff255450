"""Inspector accounts (Argon2id), sessions stored hashed with an expiry, CSRF comparison, and
`lineqc review add-user` as a user runs it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from lineqc.review.auth import (
    MIN_PASSWORD,
    AccountError,
    add_user,
    authenticate,
    end_session,
    same_token,
    session_user,
    start_session,
)
from lineqc.review.store import Store, User, WebSession


def user_row(store: Store, name: str) -> User:
    with store.session() as s:
        user = s.scalar(select(User).where(User.name == name))
        assert user is not None
        return user


def test_add_user_hashes_with_argon2id_and_authenticates(store: Store) -> None:
    assert add_user(store, "ann", "correct horse") is True
    row = user_row(store, "ann")
    assert row.password_hash.startswith("$argon2id$")
    assert "correct horse" not in row.password_hash
    assert row.is_admin is False
    assert authenticate(store, "ann", "correct horse") == row.id
    assert authenticate(store, "ann", "correct horsE") is None
    assert authenticate(store, "nobody", "correct horse") is None
    assert authenticate(store, "../ann", "correct horse") is None


def test_add_user_again_resets_the_password_and_ends_sessions(store: Store) -> None:
    add_user(store, "ann", "first password")
    token = start_session(store, user_row(store, "ann").id)
    assert session_user(store, token) is not None
    assert add_user(store, "ann", "second password", admin=True) is False
    assert authenticate(store, "ann", "first password") is None
    assert authenticate(store, "ann", "second password") is not None
    assert user_row(store, "ann").is_admin is True
    assert session_user(store, token) is None  # a reset signs the old sessions out


@pytest.mark.parametrize("name", ["", "-ann", ".ann", "an n", "ann/..", "ann\n", "é", "a" * 101])
def test_add_user_refuses_bad_names(sqlite_store: Store, name: str) -> None:
    with pytest.raises(AccountError, match=r"user name .*letters, digits"):
        add_user(sqlite_store, name, "long enough password")


def test_add_user_refuses_short_passwords(sqlite_store: Store) -> None:
    with pytest.raises(AccountError, match=f"password too short: at least {MIN_PASSWORD}"):
        add_user(sqlite_store, "ann", "x" * (MIN_PASSWORD - 1))
    with sqlite_store.session() as s:
        assert s.scalar(select(User)) is None


def test_sessions_are_stored_hashed_and_expire(store: Store) -> None:
    add_user(store, "ann", "long enough password", admin=True)
    uid = user_row(store, "ann").id
    token = start_session(store, uid)
    with store.session() as s:
        (row,) = s.scalars(select(WebSession)).all()
        assert row.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
        assert token not in (row.token_sha256, row.csrf)
    me = session_user(store, token)
    assert me is not None and (me.user_id, me.name, me.is_admin) == (uid, "ann", True)
    assert me.csrf == row.csrf and len(me.csrf) >= 32
    assert session_user(store, token + "x") is None
    assert session_user(store, None) is None

    old = start_session(store, uid, ttl_s=-1)  # already expired
    assert session_user(store, old) is None
    with store.session() as s:  # and removed on sight
        assert s.get(WebSession, hashlib.sha256(old.encode()).hexdigest()) is None

    end_session(store, token)
    assert session_user(store, token) is None


def test_csrf_comparison() -> None:
    assert same_token("abc", "abc")
    assert not same_token("abc", "abd")
    assert not same_token("abc", None)
    assert not same_token("", "")  # no token expected never means "anything goes"
    assert not same_token("abc", "ä")  # non-ASCII input is compared, not an error


def _add_user_cli(db: str, *args: str, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lineqc", "review", "add-user", "--db", db, *args],
        input=password + "\n",
        capture_output=True,
        text=True,
    )


def test_add_user_command(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'review.db'}"
    created = _add_user_cli(db, "ann", "--password-stdin", "--admin", password="long password")
    assert created.returncode == 0, created.stderr
    assert "created user 'ann'" in created.stdout
    updated = _add_user_cli(db, "ann", "--password-stdin", password="other password")
    assert updated.returncode == 0 and "updated user 'ann'" in updated.stdout

    short = _add_user_cli(db, "bob", "--password-stdin", password="short")
    assert short.returncode == 2 and "password too short" in short.stderr
    bad = _add_user_cli(db, "b b", "--password-stdin", password="long password")
    assert bad.returncode == 2 and "user name 'b b'" in bad.stderr
    no_stdin = _add_user_cli(db, "bob", password="long password")
    assert no_stdin.returncode == 2 and "--password-stdin" in no_stdin.stderr

    store = Store(db)
    try:
        assert authenticate(store, "ann", "other password") is not None
        assert user_row(store, "ann").is_admin is False
        with store.session() as s:
            assert [u.name for u in s.scalars(select(User))] == ["ann"]
    finally:
        store.close()
