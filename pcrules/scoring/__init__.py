"""Acceptance scoring: the Scorer protocol the runtime calls, and scorers that honour it."""

from .protocol import NullScorer, Scorer
from .linear import LinearScorer

__all__ = ["Scorer", "NullScorer", "LinearScorer"]
