"""Pseudonymous visitor ids: a keyed hash, so the log and the state store never hold the raw id.

The same key gives the same pseudonym in every process and release (HMAC-SHA256, never Python's hash());
without the key a pseudonym cannot be linked back to a visitor, even by someone holding a list of ids.
"""

from __future__ import annotations

import hashlib
import hmac

from ..errors import SpecError

__all__ = ["Pseudonymizer", "MIN_KEY_BYTES"]

MIN_KEY_BYTES = 16
PREFIX = "p_"


class Pseudonymizer:
    """`Pseudonymizer(key)(visitor_id)` -> "p_" + 32 hex digits (128 bits of HMAC-SHA256)."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes | str):
        raw = key.encode() if isinstance(key, str) else bytes(key)
        if len(raw) < MIN_KEY_BYTES:
            raise SpecError([f"visitor_id_key: expected at least {MIN_KEY_BYTES} bytes of secret, got {len(raw)}"])
        self._key = raw

    def __call__(self, visitor_id: str) -> str:
        return PREFIX + hmac.new(self._key, visitor_id.encode(), hashlib.sha256).hexdigest()[:32]

    def __repr__(self) -> str:  # the key never shows up in a log or a traceback
        return "Pseudonymizer(<key hidden>)"
