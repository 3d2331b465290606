"""pcrules: decide when to offer a proactive chat, to whom, and in which queue.

The runtime path (``import pcrules``; ``Runtime``) needs only durable_rules and
PyYAML: it never imports pandas, scikit-learn or the Jupyter stack.
"""

from .decision import Action, Decision, OfferStatus, Outcome, Reason
from .decision_log import DecisionLog, SQLiteDecisionLog
from .errors import ErrorCode, InvalidEvent, OfferClosed, OfferNotFound, PcrulesError, SpecError, UnknownQueue
from .runtime import Runtime
from .scoring.protocol import NullScorer, Scorer
from .spec import RuleSpec, load_spec
from .stores import MemoryStore, StateStore

__version__ = "0.1.0"

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
