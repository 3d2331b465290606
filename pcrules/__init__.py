"""pcrules: decide when to offer a proactive chat, to whom, and in which queue.

The runtime path (``import pcrules``; ``Runtime``) needs only durable_rules and
PyYAML: it never imports pandas, scikit-learn or the Jupyter stack.
"""

from ._moved import install as _install_moved_names

_install_moved_names()

from ._version import __version__ as __version__  # noqa: E402
from .core.decision import Action, Decision, OfferStatus, Outcome, Reason  # noqa: E402
from .core.spec import RuleSpec, load_spec  # noqa: E402
from .errors import ErrorCode, InvalidEvent, OfferClosed, OfferNotFound, PcrulesError, SpecError, UnknownQueue  # noqa: E402
from .runtime import DecisionLog, MemoryStore, Runtime, SQLiteDecisionLog, StateStore  # noqa: E402
from .scoring.protocol import NullScorer, Scorer  # noqa: E402

__all__ = [
    "Action",
    "Decision",
    "DecisionLog",
    "ErrorCode",
    "InvalidEvent",
    "MemoryStore",
    "NullScorer",
    "OfferClosed",
    "OfferNotFound",
    "OfferStatus",
    "Outcome",
    "PcrulesError",
    "Reason",
    "RuleSpec",
    "Runtime",
    "SQLiteDecisionLog",
    "Scorer",
    "SpecError",
    "StateStore",
    "UnknownQueue",
    "load_spec",
]
