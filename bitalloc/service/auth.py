"""API tokens: created from the CLI, shown once, kept only as a sha256; checked on every request."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from bitalloc.errors import InvalidInput
from bitalloc.service.errors import NotFound, Unauthorized
from bitalloc.service.models import Token

TOKEN_PREFIX = "bat_"


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the owner whose records it may see, and the token it used."""

    owner: str
    token_id: str


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed (never its secret)."""

    id: str
    owner: str
    name: str
    created_at: float
    revoked_at: float | None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(db: sessionmaker, owner: str, name: str = "") -> tuple[TokenInfo, str]:
    """A new token for ``owner``; returns its record and the secret (shown once, never stored)."""
    owner = owner.strip()
    if not owner or len(owner) > 200:
        raise InvalidInput("give an owner name of 1 to 200 characters (e.g. --owner alice)")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = Token(
        id=uuid.uuid4().hex, owner=owner, name=name, secret_hash=_digest(secret), created_at=time.time()
    )
    with db.begin() as s:
        s.add(row)
    return _info(row), secret


def list_tokens(db: sessionmaker, owner: str | None = None) -> list[TokenInfo]:
    """Every token (or ``owner``'s), oldest first."""
    query = select(Token).order_by(Token.created_at)
    if owner is not None:
        query = query.where(Token.owner == owner)
    with db() as s:
        return [_info(t) for t in s.scalars(query)]


def revoke_token(db: sessionmaker, token_id: str) -> TokenInfo:
    """Mark a token revoked: every later request with it is refused."""
    with db.begin() as s:
        row = s.get(Token, token_id)
        if row is None:
            raise NotFound(f"no token with id {token_id!r}; `bitalloc token list` shows the ids")
        if row.revoked_at is None:
            row.revoked_at = time.time()
        return _info(row)


def authenticate(db: sessionmaker, header: str | None) -> Caller:
    """The caller named by an ``Authorization: Bearer <token>`` header, or Unauthorized."""
    if not header:
        raise Unauthorized("missing token: send 'Authorization: Bearer <token>' (bitalloc token create)")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("malformed Authorization header: send 'Authorization: Bearer <token>'")
    with db() as s:
        row = s.scalars(select(Token).where(Token.secret_hash == _digest(secret.strip()))).first()
    if row is None:
        raise Unauthorized("unknown token: create one with `bitalloc token create --owner NAME`")
    if row.revoked_at is not None:
        raise Unauthorized("this token was revoked: create a new one with `bitalloc token create`")
    return Caller(owner=row.owner, token_id=row.id)


def _info(row: Token) -> TokenInfo:
    return TokenInfo(row.id, row.owner, row.name, row.created_at, row.revoked_at)
