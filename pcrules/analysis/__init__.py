"""The analyst's side: history, the synthetic world, backtest, tuning, value and the notebooks' helpers.

Most of it needs pcrules[analysis] (numpy, pandas, scikit-learn); reading the shipped sample does not, so
nothing is imported here eagerly. The exploration helpers of notebook 01 (``explore``) are also reachable
here by name, as they were when this was one module.
"""

from .._moved import forward_to

__getattr__ = forward_to(__name__, "explore")
