"""The result of one optimised PAC-Bayes run, and the batched evaluation helpers it shares with the engine.

:class:`PacBayesOptResult` holds the certificates, their terms, provenance, the optimisation history
and the final posterior Q (for further evaluation, e.g. on fresh data); :func:`count_wrong` and
:func:`predictions` evaluate Q or a network in batches on the posterior's device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ncbounds.bounds.pacbayes_opt_config import PacBayesOptConfig
from ncbounds.errors import UsageError
from ncbounds.pacbayes_opt.posterior import GaussianPosterior

__all__ = ["DEVICE_CACHE_BYTES", "PacBayesOptResult", "as_tensors", "batches", "count_wrong", "predictions"]

#: Inputs up to this many bytes are moved to the device once.
DEVICE_CACHE_BYTES = 1 << 30


@dataclass
class PacBayesOptResult:
    """Everything one run produced (certificates, their terms, provenance, history, final Q).

    value: the Gibbs certificate at level ``delta``; gibbs: its terms (pure-function output plus the
    λ grid choice); deterministic: the deployed-network certificate's terms (None with
    ``deterministic_reason`` when no unlabeled inputs were available); n: certificate samples actually
    evaluated; prior: kind and provenance; prior_indices / certificate_indices: the training indices of
    each part; history: per logged step ``step``, ``objective``, ``kl``, ``surrogate`` (bounded
    cross-entropy), ``error`` (0-1 error of the stochastic training mini-batches), ``prior_var``
    (λ*), ``seconds``; posterior: the final Q (for further evaluation; not serialised).
    """

    value: float
    delta: float
    gibbs: dict[str, Any]
    deterministic: dict[str, Any] | None
    deterministic_reason: str | None
    n: int
    n_train: int
    prior: dict[str, Any]
    prior_indices: np.ndarray
    certificate_indices: np.ndarray
    num_parameters: int
    objective: str
    sigma_init: str
    steps_done: int
    stopped_by: str
    seconds: dict[str, float]
    mc: dict[str, Any]
    delta_split: dict[str, float]
    history: dict[str, list]
    config: PacBayesOptConfig
    diagnostics: dict[str, Any] = field(default_factory=dict)
    posterior: GaussianPosterior | None = field(default=None, repr=False)

    # ------------------------------------------------------------------------------ records
    def inputs(self) -> dict[str, Any]:
        """What a bound record needs to reproduce the run and check its arithmetic (JSON-friendly):
        the settings, and the certificate's terms — λ = ``prior_var`` on the grid index ``j``, ``kl``,
        ê = ``gibbs_error``, Ê = ``gibbs_error_upper``, the Monte-Carlo size M (``mc_samples``: trials of
        per-example draws or whole-sample draws), the δ split and n."""
        g = self.gibbs
        return {
            "prior_var": g["prior_var"],
            "j": g["j"],
            "kl": g["kl"],
            "gibbs_error": g["gibbs_error"],
            "gibbs_error_upper": g["mc_upper"],
            "mc_samples": self.mc.get("trials", self.mc.get("draws")),
            "prior": self.prior,
            "n": self.n,
            "n_train": self.n_train,
            "num_parameters": self.num_parameters,
            "objective": self.objective,
            "sigma_init": self.sigma_init,
            "steps": self.steps_done,
            "steps_requested": self.config.steps,
            "stopped_by": self.stopped_by,
            "mc": self.mc,
            "delta_split": self.delta_split,
            "config": self.config.to_dict(),
        }

    def gibbs_details(self) -> dict[str, Any]:
        g = self.gibbs
        return {
            "gibbs_error": g["gibbs_error"], "mc_upper": g["mc_upper"], "kl": g["kl"], "kl_over_n": g["kl"] / self.n,
            "prior_var": g["prior_var"], "j": g["j"], "union_cost": g["union_cost"], "log_term": g["log_term"],
            "pb_budget": g["pb_budget"], "prior_var_optimum": g["prior_var_optimum"], "lambda_grid": g["grid"],
            "lambda_c": g["grid_c"], "lambda_b": g["grid_b"], "delta_mc": g["delta_mc"], "delta_pb": g["delta"],
            "seconds": self.seconds, "history": self.history, **self.diagnostics,
        }

    # ------------------------------------------------------------------------------ evaluation helpers
    def gibbs_error_on(self, x: np.ndarray, y: np.ndarray, passes: int = 1, seed: int = 0, batch_size: int = 1000) -> float:
        """Monte-Carlo Gibbs error of the final Q on (x, y): fresh per-example draws (full-pass if unavailable)."""
        if self.posterior is None:
            raise UsageError("this result no longer holds its posterior.")
        post = self.posterior
        xt, yt = as_tensors(post, x, y)
        gen = torch.Generator(device=post.device).manual_seed(int(seed))
        with torch.no_grad():
            if post.per_example_exact:
                wrong = sum(count_wrong(post, xt, yt, "per-example", gen, batch_size) for _ in range(passes))
                return wrong / (passes * len(yt))
            wrong = 0
            for _ in range(passes):
                w = post.sample(gen)
                wrong += count_wrong(post, xt, yt, "shared", gen, batch_size, weights=w)
            return wrong / (passes * len(yt))


def as_tensors(post: GaussianPosterior, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor | None = None):
    dtype = post.mean[post.names[0]].dtype
    xt = torch.as_tensor(np.ascontiguousarray(x)) if not isinstance(x, torch.Tensor) else x
    if xt.is_floating_point():
        xt = xt.to(dtype)
    if xt.numel() * xt.element_size() <= DEVICE_CACHE_BYTES:
        xt = xt.to(post.device)
    if y is None:
        return xt
    yt = torch.as_tensor(np.asarray(y), dtype=torch.int64).to(post.device)
    return xt, yt


def batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def count_wrong(post: GaussianPosterior, x: torch.Tensor, y: torch.Tensor, mode: str, gen: torch.Generator | None,
                 batch_size: int, weights: Mapping[str, torch.Tensor] | None = None) -> int:
    wrong = 0
    for sl in batches(len(y), batch_size):
        out = post(x[sl].to(post.device), mode, gen, weights)
        wrong += int((out.argmax(1) != y[sl]).sum())
    return wrong


def predictions(net: torch.nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    preds = []
    with torch.no_grad():
        for sl in batches(len(x), batch_size):
            preds.append(net(x[sl].to(device)).argmax(1))
    return torch.cat(preds)
