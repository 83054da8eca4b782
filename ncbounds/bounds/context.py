"""What bound functions receive: statistics, weights, sample sizes and options (no files, no click).

A bound is ``func(ctx: BoundContext) -> BoundResult``. The orchestration layer (``pipeline``) fills
the context after the pass; bounds that need to evaluate perturbed networks (PAC-Bayes, sharpness)
get that ability only through :attr:`BoundContext.gibbs`, a callable supplied by the orchestration
layer, so the bound modules themselves never touch data loaders or devices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch

from ncbounds.stats.class_stats import ClassStats
from ncbounds.stats.projected import ProjectedStats

#: Default failure probability of each certificate (the one place this default is set).
DEFAULT_DELTA = 0.05
#: Default number of Monte-Carlo weight draws of the PAC-Bayes Gibbs error estimates.
DEFAULT_MC_SAMPLES = 100


@dataclass
class BoundOptions:
    """User options shared by all bounds, and each bound's own typed settings.

    delta: failure probability of *each* certificate (every internal confidence step and union
        bound of that certificate is paid out of it); k certificates hold simultaneously w.p.
        ≥ 1 − k·δ.
    shots: m values for the m-shot transfer bounds (None → training samples per class).
    mc_samples: Monte-Carlo weight samples for PAC-Bayes Gibbs error estimates.
    seed: seed of every random draw made by bounds.
    bound: {bound name: an instance of that bound's registered options dataclass}; a bound not listed
        uses its defaults (see :meth:`for_bound`). Built from ``--bound-option NAME.KEY=VALUE`` by
        :func:`ncbounds.bounds.runner.resolve_bound_options`.
    """

    delta: float = DEFAULT_DELTA
    shots: tuple[int, ...] | None = None
    mc_samples: int = DEFAULT_MC_SAMPLES
    seed: int = 0
    bound: dict[str, Any] = field(default_factory=dict)

    def for_bound(self, spec) -> Any:
        """The settings of the bound ``spec`` (a :class:`~ncbounds.bounds.base.BoundSpec`): given or default."""
        given = self.bound.get(spec.name)
        return given if given is not None else spec.default_options()


@dataclass
class SplitSummary:
    """Penultimate-layer summary of one split.

    n: samples; errors: misclassified by the network (None without a classifier); margins (n,)
    float64 multiclass margins (None without a classifier); stats / projected: class statistics and
    the span-restricted replay; metrics: the split's penultimate metrics dict; extras: replay
    accumulators requested by bounds (see ``REPLAY_ACCUMULATORS``), by key.
    """

    n: int
    errors: int | None
    margins: np.ndarray | None
    stats: ClassStats
    projected: ProjectedStats | None
    metrics: dict
    extras: dict = field(default_factory=dict)

    @property
    def error_rate(self) -> float | None:
        return None if self.errors is None else self.errors / self.n


class GibbsOracle(Protocol):
    """Evaluates a stochastic network on the training split.

    ``oracle(sigma, n_samples, seed, reference=None, magnitude_aware=False, split='train')`` draws
    ``n_samples`` weight vectors w' = w + σ·ε (ε ~ N(0, I); with ``magnitude_aware`` the noise of
    each weight is scaled by |w_i| as in Jiang et al. 2020, σ' = σ|w_i| + ε_small), evaluates each
    on every sample of ``split`` and returns the misclassification counts (array of n_samples) and
    the number of samples per draw.
    """

    def __call__(self, sigma: float, n_samples: int, seed: int, magnitude_aware: bool = False,
                 split: str = "train") -> tuple[np.ndarray, int]: ...


@dataclass
class BoundContext:
    """Everything a bound may use. ``model``/``init_state`` are read, never modified."""

    num_classes: int
    train: SplitSummary
    test: SplitSummary
    options: BoundOptions
    head: tuple[torch.Tensor, torch.Tensor] | None = None  # (W K×d, b K) float64 CPU
    model: torch.nn.Module | None = None  # eval mode, on CPU or the evaluation device
    init_state: dict[str, torch.Tensor] | None = None  # state_dict at initialization (prior centre)
    input_shape: tuple = ()
    input_norms: dict[str, float] = field(default_factory=dict)  # train: sum_sq, max
    layerwise: dict = field(default_factory=dict)
    gibbs: Callable[..., Any] | None = None
    # optimised PAC-Bayes engine: (config, delta=, seed=) -> result, memoised (see ncbounds.pacbayes_opt)
    pacbayes_opt: Callable[..., Any] | None = None
    layer_fuzziness: list[float | None] = field(default_factory=list)
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)
    #: Only in the context of a transfer evaluation (``train``/``test`` are then the target splits):
    #: {'data': target spec, 'fewshot': penultimate few-shot entries of the target test split,
    #: 'counts': {'train'|'test': class counts}}. Empty otherwise.
    target: dict = field(default_factory=dict)

    def memo(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per context and ``key`` (e.g. the network's weights read by several bounds,
        or a σ search shared by five flatness measures); the cache lives and dies with the context."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    @property
    def samples_per_class(self) -> int:
        """Smallest training class count: the default m of the m-shot bounds."""
        counts = self.train.stats.counts
        return int(counts[counts > 0].min())
