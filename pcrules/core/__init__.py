"""The core: the rule spec, the event contract, decisions, event time and the pure policy.

Nothing here imports from the rest of the package (a test checks it): the runtime and the analysis side
both build on it.
"""

from .decision import Action, Decision, OfferStatus, Outcome, Reason
from .events import Event, validate_event
from .matches import Matches
from .policy import QueueStatus, SessionState, VisitorState, answer, decide
from .spec import RuleSpec, load_spec

__all__ = ["Action", "Decision", "OfferStatus", "Outcome", "Reason", "Event", "validate_event", "Matches",
           "QueueStatus", "SessionState", "VisitorState", "answer", "decide", "RuleSpec", "load_spec"]
