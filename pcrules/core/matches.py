"""What any matching backend reports for one event; the policy core reads only this."""

from __future__ import annotations

from dataclasses import dataclass

from .spec import Rule

__all__ = ["Matches", "NO_MATCHES"]


@dataclass(frozen=True, slots=True)
class Matches:
    full: tuple[Rule, ...] = ()  # every condition holds; strongest rule first
    unscored: tuple[Rule, ...] = ()  # would hold but for a score condition
    later: tuple[Rule, ...] = ()  # would hold but for a time-on-page condition (score ignored)

    def __bool__(self) -> bool:
        return bool(self.full or self.unscored or self.later)


NO_MATCHES = Matches()
