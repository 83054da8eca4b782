"""Typed, validated options of the optimised PAC-Bayes certificates (the bounds' settings; no torch, no I/O).

Every field is fixed before the certificate samples are seen; the engine records the whole
configuration with its result, so a run can be reproduced from the record.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ncbounds.errors import UsageError

__all__ = ["MC_MODES", "OBJECTIVES", "PAC_BAYES_OPT_GROUP", "PRIOR_KINDS", "PacBayesOptConfig"]

#: The catalogue group of the optimised PAC-Bayes bounds (``--bound-option pac-bayes-opt.KEY=VALUE``).
PAC_BAYES_OPT_GROUP = "pac-bayes-opt"

#: Prior kinds: ``init`` (data-free, centred at the initialization weights), ``learn`` (a prior network
#: trained by ncbounds on a seeded fraction of the training split), ``given`` (a user-supplied prior
#: state trained on declared training indices), ``auto`` (``init`` when initialization weights are
#: known, else ``learn``).
PRIOR_KINDS = ("auto", "init", "learn", "given")

#: Training objectives (Pérez-Ortiz et al. 2021: fquad, fclassic, flamb; their minimum fmin; Dziugaite & Roy 2017).
OBJECTIVES = ("fquad", "fclassic", "flamb", "fmin", "dziugaite-roy")

#: Monte-Carlo modes of the final evaluation: ``per-example`` (a fresh weight draw for every
#: evaluated example), ``full-pass`` (M weight draws, each evaluated on every example), ``auto``
#: (per-example when the architecture supports exact per-example draws, else full-pass).
MC_MODES = ("auto", "per-example", "full-pass")


@dataclass(frozen=True)
class PacBayesOptConfig:
    """Options of one optimised PAC-Bayes certificate (defaults chosen on MNIST-1D and digits, CPU).

    Prior
      prior: one of :data:`PRIOR_KINDS`.
      prior_fraction: fraction of the training split used to train a ``learn`` prior (the
        certificate then uses only the other samples).
      prior_epochs, prior_lr, prior_momentum, prior_batch_size: SGD for the ``learn`` prior,
        started from the initialization weights (cross-entropy, the model's own train mode).
      prior_seed: seed of the prior subset and of the prior's training (None → ``seed``).
      prior_indices: for ``given``: the training-split indices the user's prior was trained on (the
        certificate uses the complement). The prior weights themselves are passed to the engine.
    Posterior and optimisation
      objective: one of :data:`OBJECTIVES`.
      steps: Adam steps (the primary budget); time_budget_s: optional wall-clock cap (seconds;
        stops early, which makes the result depend on machine load — recorded).
      batch_size: training minibatch size.
      lr_mean, lr_sigma: Adam learning rates of the posterior mean and of log s; lr_schedule:
        ``constant`` or ``cosine`` (both rates decay as ½(1 + cos(π·step/steps))).
      sigma_init: initial posterior standard deviation, either a number (absolute, every
        parameter) or ``"relative:F"`` (s_i = F·|w_i|, floored at F·10⁻²·RMS of the tensor; Dziugaite &
        Roy start at s = 2|w|, which on MNIST-1D drove Q to the constant classifier).
      p_min: the bounded cross-entropy surrogate min(−ln p_y, ln(1/p_min))/ln(1/p_min).
      posterior_init: ``checkpoint`` (Q's mean starts at the trained weights), ``prior`` (at the prior
        centre, as Pérez-Ortiz et al. do for data-dependent priors) or ``auto`` (checkpoint for the
        ``init`` prior, prior for ``learn`` / ``given``: a learnt prior is a network trained on part of
        the data, far from the checkpoint in weight space, and Q would first have to travel to it).
      train_on: ``all`` training samples (Pérez-Ortiz et al.) or only the ``certificate`` samples.
      conv_noise: how training draws convolution noise: ``exact`` (explicit filters, one draw per
        ``examples_per_draw`` consecutive examples; unbiased) or ``local`` (local reparameterisation
        of the output, which ignores that positions share a filter and misleads the optimiser).
    Prior variance grid (Dziugaite & Roy 2017)
      lambda_c, lambda_b: λ_j = c·exp(−j/b), j = 1, 2, …; lambda_grid_size: None → countable grid
      with union cost 2 ln j + ln(π²/6); an integer G → finite grid j = 1..G, cost ln G.
    Final evaluation
      mc_mode: one of :data:`MC_MODES`; mc_passes: passes of per-example draws over the
      certificate samples (T = n·passes trials); mc_samples: M whole-sample draws in full-pass mode.
      mc_delta_fraction: share of the Gibbs certificate's δ spent on the Monte-Carlo step.
      disagreement_delta_fraction: share of the deployed-network certificate's δ spent on the
        disagreement bound (the rest goes to its Gibbs certificate, split as above).
      unlabeled: the pool of unlabeled inputs for the disagreement (``test`` inputs without their
        labels, or the name of another pool given to the engine).
    Bookkeeping
      seed: seed of every random draw (None → the bound options' seed); log_every: history step.
      eval_batch_size: batch size of the final evaluation.
    """

    prior: str = "auto"
    prior_fraction: float = 0.5
    prior_epochs: int = 100
    prior_lr: float = 0.02
    prior_momentum: float = 0.9
    prior_batch_size: int = 64
    prior_seed: int | None = None
    prior_indices: tuple[int, ...] | None = None
    objective: str = "fquad"
    steps: int = 8000
    time_budget_s: float | None = None
    batch_size: int = 250
    lr_mean: float = 3e-3
    lr_sigma: float = 3e-2
    lr_schedule: str = "constant"
    sigma_init: float | str = "relative:0.1"
    p_min: float = 0.1
    posterior_init: str = "auto"
    train_on: str = "all"
    conv_noise: str = "exact"
    examples_per_draw: int = 10
    lambda_c: float = 10.0
    lambda_b: float = 100.0
    lambda_grid_size: int | None = None
    mc_mode: str = "auto"
    mc_passes: int = 10
    mc_samples: int = 1000
    mc_delta_fraction: float = 0.2
    disagreement_delta_fraction: float = 0.3
    unlabeled: str = "test"
    seed: int | None = None
    log_every: int = 50
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        self.validate()

    # -------------------------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise :class:`UsageError` (one sentence naming the fix) for an invalid field."""

        def need(cond: bool, message: str) -> None:
            if not cond:
                raise UsageError(f"pacbayes_opt option {message}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        need(self.prior in PRIOR_KINDS, f"prior must be one of {', '.join(PRIOR_KINDS)}; got {self.prior!r}.")
        need(is_num(self.prior_fraction) and 0.0 < self.prior_fraction < 1.0,
             f"prior_fraction must lie strictly between 0 and 1; got {self.prior_fraction!r}.")
        need(is_int(self.prior_epochs) and self.prior_epochs >= 1, f"prior_epochs must be a positive integer; got {self.prior_epochs!r}.")
        need(is_num(self.prior_lr) and self.prior_lr > 0, f"prior_lr must be positive; got {self.prior_lr!r}.")
        need(is_num(self.prior_momentum) and 0 <= self.prior_momentum < 1,
             f"prior_momentum must lie in [0, 1); got {self.prior_momentum!r}.")
        need(is_int(self.prior_batch_size) and self.prior_batch_size >= 1,
             f"prior_batch_size must be a positive integer; got {self.prior_batch_size!r}.")
        need(self.prior_seed is None or is_int(self.prior_seed), f"prior_seed must be an integer or None; got {self.prior_seed!r}.")
        if self.prior_indices is not None:
            need(isinstance(self.prior_indices, tuple) and all(is_int(i) and i >= 0 for i in self.prior_indices),
                 "prior_indices must be a tuple of non-negative integer training indices.")
            need(len(set(self.prior_indices)) == len(self.prior_indices), "prior_indices must not repeat an index.")
        need(self.prior != "given" or self.prior_indices is not None,
             "prior=given needs prior_indices, the training indices the prior was trained on (an empty tuple if none).")
        need(self.objective in OBJECTIVES, f"objective must be one of {', '.join(OBJECTIVES)}; got {self.objective!r}.")
        need(is_int(self.steps) and self.steps >= 0, f"steps must be a non-negative integer; got {self.steps!r}.")
        need(self.time_budget_s is None or (is_num(self.time_budget_s) and self.time_budget_s > 0),
             f"time_budget_s must be a positive number of seconds or None; got {self.time_budget_s!r}.")
        need(is_int(self.batch_size) and self.batch_size >= 1, f"batch_size must be a positive integer; got {self.batch_size!r}.")
        need(is_num(self.lr_mean) and self.lr_mean >= 0, f"lr_mean must be non-negative; got {self.lr_mean!r}.")
        need(is_num(self.lr_sigma) and self.lr_sigma >= 0, f"lr_sigma must be non-negative; got {self.lr_sigma!r}.")
        need(self.lr_schedule in ("constant", "cosine"), f"lr_schedule must be constant or cosine; got {self.lr_schedule!r}.")
        self.sigma_rule()  # validates sigma_init
        need(is_num(self.p_min) and 0.0 < self.p_min < 1.0, f"p_min must lie strictly between 0 and 1; got {self.p_min!r}.")
        need(self.posterior_init in ("auto", "checkpoint", "prior"),
             f"posterior_init must be auto, checkpoint or prior; got {self.posterior_init!r}.")
        need(self.conv_noise in ("exact", "local"), f"conv_noise must be exact or local; got {self.conv_noise!r}.")
        need(isinstance(self.examples_per_draw, int) and not isinstance(self.examples_per_draw, bool)
             and self.examples_per_draw >= 1, f"examples_per_draw must be a positive integer; got {self.examples_per_draw!r}.")
        need(self.train_on in ("all", "certificate"), f"train_on must be all or certificate; got {self.train_on!r}.")
        need(is_num(self.lambda_c) and self.lambda_c > 0, f"lambda_c must be positive; got {self.lambda_c!r}.")
        need(is_num(self.lambda_b) and self.lambda_b > 0, f"lambda_b must be positive; got {self.lambda_b!r}.")
        need(self.lambda_grid_size is None or (is_int(self.lambda_grid_size) and self.lambda_grid_size >= 1),
             f"lambda_grid_size must be a positive integer or None; got {self.lambda_grid_size!r}.")
        need(self.mc_mode in MC_MODES, f"mc_mode must be one of {', '.join(MC_MODES)}; got {self.mc_mode!r}.")
        need(is_int(self.mc_passes) and self.mc_passes >= 1, f"mc_passes must be a positive integer; got {self.mc_passes!r}.")
        need(is_int(self.mc_samples) and self.mc_samples >= 1, f"mc_samples must be a positive integer; got {self.mc_samples!r}.")
        need(is_num(self.mc_delta_fraction) and 0.0 < self.mc_delta_fraction < 1.0,
             f"mc_delta_fraction must lie strictly between 0 and 1; got {self.mc_delta_fraction!r}.")
        need(is_num(self.disagreement_delta_fraction) and 0.0 < self.disagreement_delta_fraction < 1.0,
             f"disagreement_delta_fraction must lie strictly between 0 and 1; got {self.disagreement_delta_fraction!r}.")
        need(isinstance(self.unlabeled, str) and bool(self.unlabeled), f"unlabeled must name an input pool; got {self.unlabeled!r}.")
        need(self.seed is None or is_int(self.seed), f"seed must be an integer or None; got {self.seed!r}.")
        need(is_int(self.log_every) and self.log_every >= 1, f"log_every must be a positive integer; got {self.log_every!r}.")
        need(is_int(self.eval_batch_size) and self.eval_batch_size >= 1,
             f"eval_batch_size must be a positive integer; got {self.eval_batch_size!r}.")

    # -------------------------------------------------------------------------------- helpers
    def sigma_rule(self) -> tuple[str, float]:
        """('absolute', s) or ('relative', F) from ``sigma_init``."""
        value = self.sigma_init
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not (math.isfinite(value) and value > 0):
                raise UsageError(f"pacbayes_opt option sigma_init must be a positive standard deviation; got {value!r}.")
            return "absolute", float(value)
        if isinstance(value, str) and value.startswith("relative:"):
            try:
                factor = float(value.split(":", 1)[1])
            except ValueError:
                factor = float("nan")
            if math.isfinite(factor) and factor > 0:
                return "relative", factor
        raise UsageError(f"pacbayes_opt option sigma_init must be a positive number or 'relative:F' with F > 0; got {value!r}.")

    def resolved(self, seed: int) -> PacBayesOptConfig:
        """A copy whose ``seed`` / ``prior_seed`` None are replaced by ``seed``."""
        s = seed if self.seed is None else self.seed
        return replace(self, seed=int(s), prior_seed=int(s) if self.prior_seed is None else self.prior_seed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy (prior_indices summarised by their count)."""
        out = asdict(self)
        if self.prior_indices is not None:
            out["prior_indices"] = f"{len(self.prior_indices)} indices"
        return out

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> PacBayesOptConfig:
        """Build from a plain mapping, rejecting unknown keys with the list of accepted ones."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UsageError(f"unknown pacbayes_opt option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(names))}.")
        vals = dict(values)
        if vals.get("prior_indices") is not None:
            vals["prior_indices"] = tuple(int(i) for i in vals["prior_indices"])
        return cls(**vals)
