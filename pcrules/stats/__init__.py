"""Statistics over the decision log: uplift against the holdout, its intervals and sample sizes."""
