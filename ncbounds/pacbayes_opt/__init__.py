"""Optimised PAC-Bayes certificates for a trained network (orchestration level: torch devices, data splits).

- :class:`PacBayesOptConfig` — the validated options (prior kind, objective, steps, Monte-Carlo mode, δ split…);
- :func:`optimise_pac_bayes` — optimise Q = N(μ, diag s²) around a network and certify it (Gibbs classifier and
  deployed network);
- :class:`PacBayesOptEngine` — a model and its data bound once, runs memoised (the callable bounds receive);
- :class:`PacBayesOptResult` — the certificates, their terms, provenance and optimisation history;
- :class:`GaussianPosterior` — the stochastic network (local reparameterisation, exact per-example draws).

The certificate arithmetic itself lives in :mod:`ncbounds.bounds.pacbayes_certificate` (pure functions).
"""

from ncbounds.bounds.pacbayes_opt_config import MC_MODES, OBJECTIVES, PRIOR_KINDS, PacBayesOptConfig
from ncbounds.pacbayes_opt.engine import PacBayesOptEngine, optimise_pac_bayes
from ncbounds.pacbayes_opt.posterior import GaussianPosterior
from ncbounds.pacbayes_opt.result import PacBayesOptResult

__all__ = [
    "MC_MODES",
    "OBJECTIVES",
    "PRIOR_KINDS",
    "GaussianPosterior",
    "PacBayesOptConfig",
    "PacBayesOptEngine",
    "PacBayesOptResult",
    "optimise_pac_bayes",
]
