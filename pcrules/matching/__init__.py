"""Rule matching backends. ``durable`` serves the runtime one event at a time."""

from ..core.matches import Matches

__all__ = ["Matches"]
