"""The bound result type and the bound registry: the one place a bound says what it is.

A bound is a pure function of a :class:`~ncbounds.bounds.context.BoundContext` (statistics, weights,
sample sizes, options). It is registered with :func:`register`, which records — once — its name (the
function's name unless given), what it bounds, its status, its reference, its group, the extra
per-sample statistics it needs from the pass (:class:`ReplayRequest`) and its typed options class.
The catalogue (``ncbounds list-bounds``) is printed from the registry without evaluating anything, and
every result is built from it: an implementation returns an :class:`Evaluation` (value, inputs,
details) or raises :class:`NotApplicable` with the reason, and the registered function turns that
into a :class:`BoundResult` carrying the registry's name, status, reference and what it bounds.

Status vocabulary:

- ``certificate``: holds with probability >= 1 - delta exactly as computed (all confidence steps and
  union bounds paid);
- ``plug-in``: rigorous only if population moments are replaced by the estimates used;
- ``up-to-constants``: the published statement hides constants that could not be confirmed;
- ``predictor``: a correlate of generalization, not a bound;
- ``not-applicable``: the bound's assumptions do not hold for this model/data (``reason`` says why).

**Statistics a bound needs from the pass.** Some bounds need per-sample quantities that the class
statistics do not keep (fourth moments, spreads along decision axes, per-class covariances). A bound
declares them as :class:`ReplayRequest` objects in ``register(needs=...)``. After each split's pass
the pipeline replays that split's features once and feeds every requested accumulator (one that
follows :class:`ncbounds.stats.accumulator.Accumulator`) of the bounds selected; the filled
accumulator reaches the bound as ``ctx.<split>.extras[request.key]``. Nothing is registered anywhere
else, so adding a bound with a new statistic touches only ``ncbounds/bounds/`` (see
``docs/architecture.md``, *Where a new piece goes*).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from ncbounds.errors import NCBoundsError

STATUSES = ("certificate", "plug-in", "up-to-constants", "predictor", "not-applicable")

#: What a certificate certifies (``register(certifies=...)``), for the report's headline: ``network``
#: (the 0-1 error of the deployed network itself) or ``stochastic`` (the Gibbs risk of a stochastic
#: network built from it). Certificates of other predictors (NCC, few-shot episodes) leave it None.
CERTIFIES = ("network", "stochastic")
#: Which labelled data a certificate's value depends on (``register(evidence=...)``): ``training``
#: (the training split, plus unlabeled inputs) or ``test`` (the labelled test split).
EVIDENCE = ("training", "test")

__all__ = [
    "CERTIFIES",
    "EVIDENCE",
    "REGISTRY",
    "REPLAY",
    "STATUSES",
    "BoundResult",
    "BoundSpec",
    "Evaluation",
    "NotApplicable",
    "ReplayInfo",
    "ReplayRequest",
    "register",
    "replay_requests",
]


@dataclass
class BoundResult:
    """One evaluated bound or predictor.

    ``value`` is None only for ``not-applicable``. ``vacuous`` is True when an error bound is >= 1
    (always False for predictors, whose scale is arbitrary).
    """

    name: str
    value: float | None
    bounds: str
    status: str
    reference: str
    delta: float | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown bound status {self.status!r}; expected one of {STATUSES}")
        if self.value is not None:
            self.value = float(self.value)

    @property
    def vacuous(self) -> bool:
        is_error_bound = self.status in ("certificate", "plug-in", "up-to-constants")
        return bool(is_error_bound and self.value is not None and self.value >= 1.0)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["vacuous"] = self.vacuous
        return out


_DEFAULT_DELTA = object()


@dataclass
class Evaluation:
    """What a bound implementation returns; :func:`register` adds the registry's name, status, reference.

    ``delta``: the failure probability the value holds at (default: ``ctx.options.delta`` for bounds
    whose registered status is not ``predictor``, None for predictors). ``status``: only when the
    result is *weaker* than registered (e.g. a certificate downgraded to ``plug-in`` because an input
    was estimated), with the reason in ``reason``.
    """

    value: float | None
    inputs: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    delta: Any = _DEFAULT_DELTA
    reason: str | None = None
    status: str | None = None


class NotApplicable(NCBoundsError):
    """Raised by a bound whose assumptions fail or whose inputs are missing: a ``not-applicable`` result.

    ``inputs`` (recorded on the result) say which split / setting was looked at.
    """

    def __init__(self, reason: str, inputs: dict[str, Any] | None = None, delta: Any = _DEFAULT_DELTA) -> None:
        super().__init__(reason)
        self.inputs = dict(inputs or {})
        self.delta = delta


@dataclass(frozen=True)
class ReplayInfo:
    """What a replay accumulator may know about the split it is fed.

    ``split``: ``"train"`` or ``"test"``; ``head``: the classifier (W K×d, b K) float64, or None for
    features without a classifier; ``reference_means`` / ``reference_present``: the **training** class
    means (K×d) and the mask of classes present in training — None on the training split itself.
    """

    split: str
    head: tuple[torch.Tensor, torch.Tensor] | None = None
    reference_means: torch.Tensor | None = None
    reference_present: torch.Tensor | None = None


@dataclass(frozen=True)
class ReplayRequest:
    """A per-sample statistic a bound needs: ``factory(class_stats, info)`` → accumulator or None.

    ``key`` names it in ``ctx.<split>.extras``; ``splits`` are the splits it runs on. The factory gets
    the split's final :class:`~ncbounds.stats.class_stats.ClassStats` of the penultimate layer and a
    :class:`ReplayInfo`; it may return None to decline (e.g. the statistic would not fit in memory),
    and the bound then reports why it is not applicable.
    """

    key: str
    factory: Callable[[Any, ReplayInfo], Any]
    splits: tuple[str, ...] = ("train", "test")


@dataclass(frozen=True)
class BoundSpec:
    """Catalogue entry: the registered function and what it declares about itself."""

    name: str
    func: Callable[..., BoundResult]
    bounds: str
    status: str
    reference: str
    group: str  # "certificates", "norm-margin", "pac-bayes", "collapse", "predictors", "jiang", "jiang-flatness"
    needs: tuple[ReplayRequest, ...] = ()
    options: type | None = None  # a dataclass of this bound's own settings (``--bound-option NAME.KEY=VALUE``)
    certifies: str | None = None  # one of CERTIFIES (certificates of the network or a stochastic network)
    evidence: str = "training"  # one of EVIDENCE

    def result(self, evaluation: Evaluation, default_delta: float | None) -> BoundResult:
        """The :class:`BoundResult` of an implementation's :class:`Evaluation`."""
        delta = evaluation.delta
        if delta is _DEFAULT_DELTA:
            delta = None if self.status == "predictor" else default_delta
        return BoundResult(self.name, evaluation.value, self.bounds, evaluation.status or self.status, self.reference,
                           delta, inputs=dict(evaluation.inputs), reason=evaluation.reason, details=dict(evaluation.details))

    def not_applicable(self, reason: str, default_delta: float | None, inputs: dict | None = None,
                       delta: Any = _DEFAULT_DELTA) -> BoundResult:
        """A ``not-applicable`` result with ``reason``."""
        if delta is _DEFAULT_DELTA:
            delta = None if self.status == "predictor" else default_delta
        return BoundResult(self.name, None, self.bounds, "not-applicable", self.reference, delta,
                           inputs=dict(inputs or {}), reason=reason)

    def default_options(self) -> Any:
        """An instance of :attr:`options` with its defaults (None when the bound has no settings)."""
        return self.options() if self.options is not None else None


REGISTRY: dict[str, BoundSpec] = {}


def register(name: str | None = None, *, bounds: str, status: str, reference: str, group: str,
             needs: tuple[ReplayRequest, ...] = (), options: type | None = None, certifies: str | None = None,
             evidence: str = "training"):
    """Decorator that adds a bound implementation to the catalogue (name: the function's, unless given).

    The returned function takes a context and returns a complete :class:`BoundResult`: the
    implementation's :class:`Evaluation` (or list of them) gets the registered name, status,
    reference and what it bounds; a :class:`NotApplicable` it raises becomes a ``not-applicable``
    result with the reason. ``certifies`` / ``evidence`` place a certificate in the report's headline
    (:mod:`ncbounds.bounds.headline`).
    """
    if certifies is not None and (status != "certificate" or certifies not in CERTIFIES):
        raise ValueError(f"certifies must be one of {CERTIFIES} and only for certificates, not {certifies!r} ({status})")
    if evidence not in EVIDENCE:
        raise ValueError(f"evidence must be one of {EVIDENCE}, not {evidence!r}")
    if status not in STATUSES or status == "not-applicable":
        raise ValueError(f"a bound registers as one of {STATUSES[:-1]}, not {status!r}")
    if options is not None and not dataclasses.is_dataclass(options):
        raise TypeError(f"options of a bound must be a dataclass, not {options!r}")

    def wrap(func: Callable[..., Evaluation]) -> Callable[..., BoundResult]:
        bound_name = name or func.__name__
        if bound_name in REGISTRY:
            raise ValueError(f"bound {bound_name!r} registered twice")

        @functools.wraps(func)
        def evaluate(ctx) -> BoundResult:
            spec = REGISTRY[bound_name]
            delta = ctx.options.delta
            try:
                out = func(ctx, ctx.options.for_bound(spec)) if spec.options is not None else func(ctx)
            except NotApplicable as exc:
                return spec.not_applicable(str(exc), delta, exc.inputs, exc.delta)
            if isinstance(out, list):
                return [spec.result(o, delta) if isinstance(o, Evaluation) else o for o in out]
            return spec.result(out, delta) if isinstance(out, Evaluation) else out

        REGISTRY[bound_name] = BoundSpec(bound_name, evaluate, bounds, status, reference, group, tuple(needs), options,
                                         certifies, evidence)
        return evaluate

    return wrap


@dataclass(frozen=True)
class ReplayUse:
    """A statistic of the pass and the bounds that request it (a view derived from the registry)."""

    key: str
    factory: Callable[[Any, ReplayInfo], Any]
    splits: tuple[str, ...]
    needed_by: tuple[str, ...]


class _ReplayView(Mapping):
    """{key: :class:`ReplayUse`} of every statistic some registered bound requests, read from the
    registry each time (there is no second registration: bounds declare their needs in ``register``)."""

    def _uses(self) -> dict[str, ReplayUse]:
        uses: dict[str, ReplayUse] = {}
        for spec in REGISTRY.values():
            for request in spec.needs:
                prev = uses.get(request.key)
                needed = (prev.needed_by if prev else ()) + (spec.name,)
                uses[request.key] = ReplayUse(request.key, request.factory, request.splits, needed)
        return uses

    def __getitem__(self, key: str) -> ReplayUse:
        return self._uses()[key]

    def __iter__(self):
        return iter(self._uses())

    def __len__(self) -> int:
        return len(self._uses())


#: Read-only view of the statistics the registered bounds request (for the catalogue and tests).
REPLAY: Mapping[str, ReplayUse] = _ReplayView()


def replay_requests(selected: list[str], split: str, info: ReplayInfo) -> dict[str, Callable[[Any], Any]]:
    """Factories (bound to ``info``) of the statistics the ``selected`` bounds need on ``split``, by key."""
    out: dict[str, Callable[[Any], Any]] = {}
    for name in selected:
        spec = REGISTRY.get(name)
        for request in spec.needs if spec is not None else ():
            if split in request.splits and request.key not in out:
                out[request.key] = functools.partial(request.factory, info=info)
    return out
