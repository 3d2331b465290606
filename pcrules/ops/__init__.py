"""Operations: queries over the decision log, the ops dashboard's view, and the Voila launcher.

The view's names are also reachable here, as they were when this was one module (imported on first use).
"""

from .._moved import forward_to

__getattr__ = forward_to(__name__, "view")
