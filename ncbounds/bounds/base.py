"""The bound result type and the bound registry (DESIGN §6).

A bound is a pure function of statistics, weights, sample sizes and options. It is registered with
what it bounds, its status and its reference, so the catalogue (`ncbounds list-bounds`) can be
printed without evaluating anything.

Status vocabulary (DESIGN §6):
- ``certificate``: holds with probability >= 1 - delta exactly as computed (all confidence steps and
  union bounds paid);
- ``plug-in``: rigorous only if population moments are replaced by the estimates used;
- ``up-to-constants``: the published statement hides constants that could not be confirmed;
- ``predictor``: a correlate of generalization, not a bound;
- ``not-applicable``: the bound's assumptions do not hold for this model/data (``reason`` says why).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

STATUSES = ("certificate", "plug-in", "up-to-constants", "predictor", "not-applicable")


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


@dataclass(frozen=True)
class BoundSpec:
    """Catalogue entry: the function and what it declares about itself."""

    name: str
    func: Callable[..., BoundResult]
    bounds: str
    status: str
    reference: str
    group: str  # "certificates", "norm-margin", "pac-bayes", "collapse", "predictors", "jiang"


REGISTRY: dict[str, BoundSpec] = {}


def register(name: str, *, bounds: str, status: str, reference: str, group: str):
    """Decorator that adds a bound function to the catalogue under ``name``."""

    def wrap(func: Callable[..., BoundResult]) -> Callable[..., BoundResult]:
        if name in REGISTRY:
            raise ValueError(f"bound {name!r} registered twice")
        REGISTRY[name] = BoundSpec(name, func, bounds, status, reference, group)
        return func

    return wrap


# ------------------------------------------------------------------------------------------------
# replay accumulators: per-sample statistics that bounds need and the pass does not collect.
#
# A bound module may register ``factory(stats, info) -> accumulator | None`` under a key; the
# pipeline calls it for the penultimate layer of each split in ``splits`` after the pass, with
# ``stats`` the split's ClassStats (final means) and ``info`` = {"split": name, "head": (W, b) or
# None, "reference_means": training means (K×d float64) or None for the training split itself,
# "reference_present": bool mask of the classes present in the training split, or None}.
# The accumulator's ``update(features, labels)`` then sees every float64 feature row of that split,
# and the fed object is available to bounds as ``ctx.<split>.extras[key]``.

@dataclass(frozen=True)
class ReplaySpec:
    """A registered replay accumulator: its factory, the splits it runs on, the bounds that need it."""

    key: str
    factory: Callable[..., Any]
    splits: tuple[str, ...]
    needed_by: tuple[str, ...] | None  # None: requested whenever any bound is evaluated


REPLAY: dict[str, ReplaySpec] = {}


def register_replay(
    key: str,
    factory: Callable[..., Any],
    splits: tuple[str, ...] = ("train", "test"),
    needed_by: tuple[str, ...] | None = None,
) -> None:
    """Request a replay accumulator (see above) for the penultimate layer of ``splits``.

    ``needed_by``: names of the bounds that use it, so it only runs when one of them is selected.
    """
    REPLAY[key] = ReplaySpec(key, factory, tuple(splits), None if needed_by is None else tuple(needed_by))


def replay_requests(selected: list[str], split: str, info: dict) -> dict[str, Callable[..., Any]]:
    """Factories (bound to ``info``) of the replay accumulators the ``selected`` bounds need on ``split``."""
    out = {}
    for spec in REPLAY.values():
        wanted = spec.needed_by is None or any(n in selected for n in spec.needed_by)
        if selected and wanted and split in spec.splits:
            out[spec.key] = (lambda stats, _f=spec.factory: _f(stats, info))
    return out
