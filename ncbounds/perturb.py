"""Gibbs oracle: 0-1 errors of Gaussian-perturbed copies of a network (orchestration level).

Implements the :class:`ncbounds.bounds.context.GibbsOracle` protocol that PAC-Bayes and flatness
bounds use (they never touch data or devices themselves)::

    oracle = make_gibbs_oracle(model, data, device, batch_size)
    counts, n = oracle(sigma, n_samples, seed)            # counts: (n_samples,) int64 errors out of n

Conventions
-----------
- ``sigma`` is the **standard deviation** of the noise, never its variance: each draw is
  w' = w + σ·ε with ε ~ N(0, I) on every parameter of
  :func:`ncbounds.bounds.pacbayes.perturbed_parameters` (the trainable floating-point parameters,
  BatchNorm affine weights included). Buffers — BatchNorm running statistics — are not perturbed.
- ``magnitude_aware=True`` (Jiang et al. 2020, Appendix C, magnitude-aware perturbations): the
  noise of weight i has variance σ²·w_i² + ε² (standard deviation √(σ²w_i² + ε²)), ε =
  ``magnitude_eps`` = 1e-3, so the perturbation is relative to the weight's magnitude and never
  exactly zero.
- Each draw is evaluated in eval mode on every sample of the chosen split (``'train'`` by default;
  ``'test'`` / ``'heldout'`` when the data has them), in the given batch size, under ``no_grad``.
- Threads: on CPU, models with ≤ ``SINGLE_THREAD_MAX_PARAMS`` perturbed parameters are evaluated
  with ``torch.set_num_threads(1)`` for the duration of a call (restored afterwards; process-wide,
  so do not run other torch work concurrently in other threads); ``num_threads`` overrides.
- Deterministic: draw j's noise comes from a ``torch.Generator`` on the evaluation device seeded
  with ``seed``; the same (σ, n_samples, seed) gives the same counts, and the same seed with
  another σ reuses the same ε (common random numbers).
- The caller's model is never modified: one working copy (made on the first call, hooks removed,
  moved to ``device``) is perturbed in place, from a snapshot of the original weights taken at that
  time; :meth:`GibbsOracle.release` frees it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from ncbounds.bounds.jiang_flatness import MAGNITUDE_EPS
from ncbounds.bounds.pacbayes import perturbed_parameters
from ncbounds.errors import UsageError
from ncbounds.io.datasets import Split, iterate_batches

__all__ = ["MAGNITUDE_EPS", "GibbsOracle", "make_gibbs_oracle"]

#: Splits up to this many bytes are kept on the evaluation device between draws.
DEVICE_CACHE_BYTES = 1 << 30

#: On CPU, models with at most this many perturbed parameters are evaluated on one intra-op thread
#: (their per-batch work is too small to gain from threads, and a busy machine makes the thread
#: pool's synchronisation cost 10–50× the work: measured 0.15–0.3 s vs 4–14 s per 100 draws of a
#: 3.5k-parameter digits MLP on 2 oversubscribed cores).
SINGLE_THREAD_MAX_PARAMS = 200_000


def _as_splits(data: Any) -> dict[str, Split]:
    if isinstance(data, Split):
        return {"train": data}
    if isinstance(data, Mapping):
        return {str(k): v for k, v in data.items() if v is not None}
    if hasattr(data, "splits") and callable(data.splits):  # DataSource
        return dict(data.splits())
    raise TypeError(f"expected a Split, a DataSource or a dict of Splits, not {type(data).__name__}")


def _check_draws(sigma: Any, n_samples: Any) -> tuple[float, int]:
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite non-negative standard deviation, got {sigma!r}")
    if isinstance(n_samples, bool) or int(n_samples) != n_samples or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    return sigma, int(n_samples)


class GibbsOracle:
    """Callable ``(sigma, n_samples, seed, magnitude_aware=False, split='train') -> (counts, n)``.

    See the module docstring for the conventions. ``perturbed_models`` exposes the perturbed copies
    themselves (for tests and for other Monte-Carlo quantities).
    """

    def __init__(self, model: torch.nn.Module, data: Any, device: str | torch.device | None = None,
                 batch_size: int = 256, *, magnitude_eps: float = MAGNITUDE_EPS,
                 cache_bytes: int = DEVICE_CACHE_BYTES, num_threads: int | None = None) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch size must be a positive integer, got {batch_size!r}")
        self._model = model
        self.splits = _as_splits(data)
        if "train" not in self.splits:
            raise UsageError("the Gibbs oracle needs a training split")
        if device is None:
            first = next(iter(model.parameters()), None)
            device = first.device if first is not None else "cpu"
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.magnitude_eps = float(magnitude_eps)
        self.cache_bytes = int(cache_bytes)
        self.num_threads = num_threads
        self._work: torch.nn.Module | None = None
        self._params: list[torch.Tensor] = []
        self._base: list[torch.Tensor] = []
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ setup
    def _prepare(self) -> None:
        if self._work is not None:
            return
        # the caller's hooks (e.g. a feature extractor) must neither be copied nor run on the draws:
        # the memo maps every hook table to a fresh empty one, leaving the original untouched
        memo: dict[int, Any] = {}
        for module in self._model.modules():
            for key, table in vars(module).items():
                if key.endswith("hooks") and isinstance(table, dict):
                    memo[id(table)] = type(table)()
        work = copy.deepcopy(self._model, memo).to(self.device).eval()
        params = [p for _, p in perturbed_parameters(work)]
        if not params:
            raise UsageError("the model has no floating-point parameters to perturb")
        self._work = work
        self._params = params
        self._base = [p.detach().clone() for p in params]

    def release(self) -> None:
        """Free the working copy and cached data (the next call rebuilds them)."""
        self._work, self._params, self._base, self._cache = None, [], [], {}

    def sizes(self) -> dict[str, int]:
        return {name: len(s) for name, s in self.splits.items()}

    def _batches(self, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        data = self.splits[split]
        dtype = self._base[0].dtype
        if split in self._cache:
            x, y = self._cache[split]
            for start in range(0, len(y), self.batch_size):
                yield x[start:start + self.batch_size], y[start:start + self.batch_size]
            return
        nbytes = data.x.nbytes + data.y.nbytes
        if nbytes <= self.cache_bytes:
            x = torch.from_numpy(np.ascontiguousarray(data.x)).to(self.device)
            if x.is_floating_point() and dtype.is_floating_point:
                x = x.to(dtype)
            y = torch.from_numpy(np.ascontiguousarray(data.y)).to(self.device, torch.int64)
            self._cache[split] = (x, y)
            yield from self._batches(split)
            return
        for xb, yb in iterate_batches(data, self.batch_size):
            xb = xb.to(self.device, non_blocking=True)
            if xb.is_floating_point() and dtype.is_floating_point:
                xb = xb.to(dtype)
            yield xb, yb.to(self.device, non_blocking=True)

    # ------------------------------------------------------------------ draws
    def perturbed_models(self, sigma: float, n_samples: int, seed: int,
                         magnitude_aware: bool = False) -> Iterator[torch.nn.Module]:
        """Yield the working copy with draw j's weights, for j = 0..n_samples−1 (do not keep it).

        Draw j: w' = w + s ⊙ ε_j, s = σ (or √(σ²w² + ε²) when ``magnitude_aware``), ε_j ~ N(0, I)
        from a generator seeded with ``seed``.
        """
        sigma, n_samples = _check_draws(sigma, n_samples)
        self._prepare()
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(seed))
        with torch.no_grad():
            if magnitude_aware:
                scales = [torch.sqrt((sigma * b) ** 2 + self.magnitude_eps ** 2) for b in self._base]
            else:
                scales = [None] * len(self._base)
            noise = [torch.empty_like(b) for b in self._base]
        try:
            for _ in range(n_samples):
                with torch.no_grad():  # never held across the yield (grad mode is thread-global)
                    for p, b, s, eps in zip(self._params, self._base, scales, noise, strict=True):
                        torch.randn(b.shape, generator=gen, out=eps)
                        if s is None:
                            torch.add(b, eps, alpha=sigma, out=p)
                        else:
                            torch.addcmul(b, s, eps, out=p)
                yield self._work
        finally:
            with torch.no_grad():
                for p, b in zip(self._params, self._base, strict=True):
                    p.copy_(b)

    def _errors(self, model: torch.nn.Module, split: str) -> int:
        wrong = torch.zeros((), dtype=torch.int64, device=self.device)
        for xb, yb in self._batches(split):
            out = model(xb)
            if not isinstance(out, torch.Tensor) or out.ndim != 2:
                raise UsageError("the Gibbs oracle needs a model that returns (batch, classes) logits")
            wrong += (out.argmax(1) != yb).sum()
        return int(wrong)

    def __call__(self, sigma: float, n_samples: int, seed: int, magnitude_aware: bool = False,
                 split: str = "train") -> tuple[np.ndarray, int]:
        if split not in self.splits:
            raise UsageError(f"unknown split {split!r} for the Gibbs oracle; available: {', '.join(self.splits)}")
        sigma, n_samples = _check_draws(sigma, n_samples)
        counts = np.empty(n_samples, dtype=np.int64)
        self._prepare()
        threads = self._call_threads()
        previous = torch.get_num_threads()
        if threads is not None and threads != previous:
            torch.set_num_threads(threads)
        try:
            with torch.no_grad():
                for j, model in enumerate(self.perturbed_models(sigma, n_samples, seed, magnitude_aware)):
                    counts[j] = self._errors(model, split)
        finally:
            if torch.get_num_threads() != previous:
                torch.set_num_threads(previous)
        return counts, len(self.splits[split])

    def _call_threads(self) -> int | None:
        """Intra-op threads during a call: ``num_threads`` if set; on CPU 1 for small models; else unchanged."""
        if self.num_threads is not None:
            return int(self.num_threads)
        if self.device.type == "cpu" and sum(p.numel() for p in self._params) <= SINGLE_THREAD_MAX_PARAMS:
            return 1
        return None


def make_gibbs_oracle(model: torch.nn.Module, split: Any, device: str | torch.device | None = None,
                      batch_size: int = 256, *, splits: Mapping[str, Split] | None = None,
                      magnitude_eps: float = MAGNITUDE_EPS, num_threads: int | None = None) -> GibbsOracle:
    """A :class:`GibbsOracle` for ``model`` on ``split``.

    ``split``: the training :class:`~ncbounds.io.datasets.Split`, a ``DataSource`` (its train /
    test / held-out splits) or a dict of Splits with a ``'train'`` entry; ``splits`` adds more named
    splits (e.g. ``{'test': ...}``). Nothing is copied or moved until the first call.
    """
    data = _as_splits(split)
    if splits:
        data.update({str(k): v for k, v in splits.items() if v is not None})
    return GibbsOracle(model, data, device, batch_size, magnitude_eps=magnitude_eps, num_threads=num_threads)
