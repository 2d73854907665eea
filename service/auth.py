"""Tokens and who holds them.

Tokens are never stored: the configuration holds their SHA-256 hashes, and a presented token is
hashed and looked up by that hash. The lookup is keyed by the digest rather than by the token, so
its timing says nothing about the secret; the final ``hmac.compare_digest`` keeps the comparison
itself constant-time as well.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from service import errors

TOKEN_BYTES = 32


class Scope(enum.Enum):
    ACCOUNT = "account"
    INSTANCE = "instance"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a token belongs to: an account (all its instances) or one instance."""

    scope: Scope
    name: str
    account: str
    token_sha256: str

    @property
    def label(self) -> str:
        """A name safe to log: never the token, and only a prefix of its hash."""
        return f"{self.scope.value}:{self.name}#{self.token_sha256[:8]}"


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token, as stored in the configuration."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (URL-safe, 256 bits)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


class TokenRegistry:
    """Authenticates presented tokens against the configured hashes."""

    def __init__(self, principals: Iterable[Principal]) -> None:
        self._by_hash: dict[bytes, Principal] = {}
        for principal in principals:
            digest = bytes.fromhex(principal.token_sha256)
            if digest in self._by_hash:
                other = self._by_hash[digest]
                raise ValueError(f"{principal.label} and {other.label} share a token")
            self._by_hash[digest] = principal

    def authenticate(self, token: str | None) -> Principal:
        """The token's holder."""
        if not token:
            raise errors.TOKEN_MISSING.error()
        if not token.isprintable():
            # A control character, or bytes that were not UTF-8 (which an HTTP header's value
            # arrives as, escaped): no configured token is such a string, and hashing one would
            # fail on the escapes.
            raise errors.TOKEN_INVALID.error()
        digest = hashlib.sha256(token.encode()).digest()
        principal = self._by_hash.get(digest)
        if principal is None or not hmac.compare_digest(
            digest, bytes.fromhex(principal.token_sha256)
        ):
            raise errors.TOKEN_INVALID.error()
        return principal
