"""Rule matching backends. ``durable`` serves the runtime one event at a time."""

from .result import Matches

__all__ = ["Matches"]
