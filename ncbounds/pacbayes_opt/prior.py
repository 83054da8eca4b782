"""Prior centres for the optimised PAC-Bayes certificate, and the split of the training samples.

A prior N(w₀, λI) must not depend on the samples the certificate is computed on. Three kinds:

- ``init``: w₀ = the weights at initialization (data-free); every training sample is a certificate
  sample (Dziugaite & Roy 2017).
- ``learn``: a seeded random fraction of the training split trains a prior network by SGD from the
  initialization weights (or from a seeded re-initialization when none are known); the certificate
  uses only the remaining samples (the data-dependent prior of Pérez-Ortiz et al. 2021, §5, and
  Dziugaite et al. 2021).
- ``given``: a user-supplied prior state and the training indices it was trained on; the
  certificate uses the complement.

Orchestration level: uses torch on the given device, never files.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ncbounds.bounds.pacbayes import perturbed_parameters
from ncbounds.bounds.pacbayes_opt_config import PacBayesOptConfig
from ncbounds.errors import UsageError
from ncbounds.pacbayes_opt.posterior import working_copy

__all__ = ["PriorChoice", "certificate_split", "matching_centre", "resolve_prior", "train_prior"]


@dataclass
class PriorChoice:
    """The prior centre and the certificate samples it leaves.

    centre: w₀ by parameter name (detached, on the device); kind: init / learn / given;
    prior_indices / certificate_indices: sorted int64 training indices; info: provenance for the record.
    """

    kind: str
    centre: dict[str, torch.Tensor]
    prior_indices: np.ndarray
    certificate_indices: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def matching_centre(model: nn.Module, state: Mapping[str, torch.Tensor] | None, what: str) -> dict[str, torch.Tensor]:
    """The tensors of ``state`` for every perturbed parameter of ``model`` (UsageError if any is missing)."""
    if state is None:
        hint = "init_checkpoint in the sidecar or --init" if what == "initialization" else "the prior weights"
        raise UsageError(f"the {what} weights are not known; give them ({hint}) or use another prior.")
    named = perturbed_parameters(model)
    missing = [n for n, _ in named if n not in state]
    bad = [n for n, p in named if n in state and tuple(state[n].shape) != tuple(p.shape)]
    if missing or bad:
        detail = "; ".join(part for part in (
            f"missing {', '.join(missing[:5])}" if missing else "",
            f"shape mismatch for {', '.join(bad[:5])}" if bad else "") if part)
        raise UsageError(f"the {what} weights do not match the model ({detail}); give weights saved from this architecture.")
    return {n: state[n].detach().clone() for n, _ in named}


def certificate_split(n_train: int, kind: str, fraction: float, seed: int,
                      declared: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(prior indices, certificate indices), both sorted int64, disjoint, covering 0..n_train−1.

    ``init``: no prior samples. ``learn``: ⌊fraction·n⌋ indices from a permutation drawn by
    ``numpy.random.default_rng([seed, 0x5052])``. ``given``: the declared indices.
    """
    all_idx = np.arange(n_train, dtype=np.int64)
    if kind == "init":
        prior = np.zeros(0, dtype=np.int64)
    elif kind == "learn":
        k = int(np.floor(fraction * n_train))
        if k < 1:
            raise UsageError(f"prior_fraction {fraction} of {n_train} training samples leaves no sample to train the prior on.")
        perm = np.random.default_rng([int(seed), 0x5052]).permutation(n_train)
        prior = np.sort(perm[:k]).astype(np.int64)
    elif kind == "given":
        prior = np.asarray(sorted(declared or ()), dtype=np.int64)
        if prior.size and (prior.min() < 0 or prior.max() >= n_train):
            raise UsageError(f"prior_indices must lie in 0..{n_train - 1} (the training split has {n_train} samples).")
    else:
        raise UsageError(f"unknown prior kind {kind!r}.")
    mask = np.ones(n_train, dtype=bool)
    mask[prior] = False
    return prior, all_idx[mask]


def _reinitialised(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` whose modules are reset by their own ``reset_parameters`` (seeded)."""
    clone = working_copy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for module in clone.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return clone


def train_prior(model: nn.Module, x: torch.Tensor, y: torch.Tensor, start: Mapping[str, torch.Tensor] | None, *,
                epochs: int, lr: float, momentum: float, batch_size: int, seed: int,
                device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train a prior network by SGD (cross-entropy) on (x, y) and return its perturbed parameters.

    Starts from ``start`` (the initialization weights) when given, else from a seeded
    re-initialization of ``model`` (data-free either way). Mini-batches are drawn from a
    ``torch.Generator`` seeded with ``seed``; the network is in train mode (its own dropout and
    batch statistics) while training. Returns (centre by parameter name, info).
    """
    t0 = time.perf_counter()
    if start is None:
        net = _reinitialised(model, seed).to(device)
        origin = f"a re-initialization of the architecture (reset_parameters, seed {seed})"
    else:
        net = working_copy(model, device)
        with torch.no_grad():
            params = dict(net.named_parameters())
            for name, value in start.items():
                params[name].copy_(value.to(device, params[name].dtype))
        origin = "the initialization weights"
    names = [n for n, _ in perturbed_parameters(net)]
    params = dict(net.named_parameters())
    for p in net.parameters():
        p.requires_grad_(False)
    for n in names:
        params[n].requires_grad_(True)
    opt = torch.optim.SGD([params[n] for n in names], lr=lr, momentum=momentum)
    gen = torch.Generator(device="cpu").manual_seed(int(seed) + 1)
    n = int(y.shape[0])
    net.train()
    total = 0.0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for start_i in range(0, n, batch_size):
            idx = perm[start_i:start_i + batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(xb), yb)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
    net.eval()
    with torch.no_grad():
        wrong = 0
        for start_i in range(0, n, 1000):
            wrong += int((net(x[start_i:start_i + 1000].to(device)).argmax(1).cpu() != y[start_i:start_i + 1000]).sum())
    info = {"started_from": origin, "epochs": epochs, "lr": lr, "momentum": momentum, "batch_size": batch_size,
            "final_train_loss": total / max(n, 1), "prior_subset_error": wrong / max(n, 1),
            "seconds": time.perf_counter() - t0}
    centre = {name: params[name].detach().clone() for name in names}
    return centre, info


def resolve_prior(model: torch.nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, config: PacBayesOptConfig,
                   init_state: Mapping[str, torch.Tensor] | None, prior_state: Mapping[str, torch.Tensor] | None,
                   device: torch.device) -> PriorChoice:
    """The prior centre and the certificate samples for ``config.prior`` (``auto`` → ``init`` when
    initialization weights are known, else ``learn``), with provenance (kind, subset sizes, the
    SHA-256 of the prior indices) for the record."""
    kind = config.prior
    init_centre = None
    if init_state is not None:
        try:
            init_centre = matching_centre(model, init_state, "initialization")
        except UsageError:
            if kind in ("init", "auto"):
                raise
    if kind == "auto":
        kind = "init" if init_centre is not None else "learn"
    n_train = int(train_y.shape[0])
    prior_idx, cert_idx = certificate_split(n_train, kind, config.prior_fraction, config.prior_seed, config.prior_indices)
    info: dict[str, Any] = {"kind": kind, "requested": config.prior, "prior_samples": int(prior_idx.size),
                            "certificate_samples": int(cert_idx.size)}
    if kind == "init":
        if init_centre is None:
            raise UsageError("prior=init needs the initialization weights (init_checkpoint in the sidecar or --init).")
        centre = init_centre
        info["centre"] = "initialization weights (data-free)"
    elif kind == "learn":
        idx = torch.as_tensor(prior_idx)
        centre, train_info = train_prior(model, train_x[idx], train_y[idx], init_centre, epochs=config.prior_epochs,
                                         lr=config.prior_lr, momentum=config.prior_momentum,
                                         batch_size=config.prior_batch_size, seed=config.prior_seed, device=device)
        info.update(centre="a network trained on the prior subset", subset_seed=config.prior_seed,
                    fraction=config.prior_fraction, training=train_info)
    else:
        centre = matching_centre(model, prior_state, "given prior")
        info["centre"] = "user-given prior weights, trained on the declared prior_indices"
    info["prior_indices_sha256"] = _sha(prior_idx)
    return PriorChoice(kind, {k: v.to(device) for k, v in centre.items()}, prior_idx, cert_idx, info)


def _sha(idx: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(idx, dtype="<i8").tobytes()).hexdigest()
