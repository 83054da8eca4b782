"""What can be certified: the tightest valid certificate of each kind among a record's bound results.

Three lines lead the report (``render_table``), read from the catalogue's ``certifies`` / ``evidence``
(see :func:`ncbounds.bounds.base.register`):

1. the deployed network, from training data (and unlabeled inputs): e.g. ``golowich2018``,
   ``pacbayes_opt_deterministic``;
2. a stochastic network built from it, from training data: ``pacbayes_gauss``, ``pacbayes_opt``
   (their Gibbs risk, not the deployed network's error);
3. the deployed network, from the labelled test set: ``test_kl``, ``test_cp``, ``nc_split_certificate``.

Each certificate holds with probability ≥ 1 − δ on its own. Picking the smallest of k certificates
after seeing them is itself a choice: the minimum holds with probability ≥ 1 − (δ₁ + … + δ_k) (union
bound; 1 − k·δ for equal levels), and the headline says so whenever k > 1. A value ≥ 1 is vacuous (it says nothing about a 0-1 error) and is
flagged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ncbounds.bounds.runner import load_catalogue

__all__ = ["HEADLINES", "Headline", "tightest_certificates"]

#: (key, what it certifies, evidence, label) of each headline line, in the order the report prints them.
HEADLINES = (
    ("network_training", "network", "training", "deployed network, from training data (+ unlabeled inputs)"),
    ("stochastic_training", "stochastic", "training", "stochastic network (Gibbs risk), from training data"),
    ("network_test", "network", "test", "deployed network, from the labelled test set"),
)


@dataclass(frozen=True)
class Headline:
    """The tightest certificate of one kind: ``name``/``value``/``delta`` of the smallest valid one (None
    when none was computed), ``candidates`` the number of valid certificates it was chosen from and
    ``total_delta`` the sum of their δ, ``vacuous`` when its value is ≥ 1. The minimum itself holds
    with probability ≥ :attr:`joint_confidence` = 1 − ``total_delta``."""

    key: str
    label: str
    name: str | None
    value: float | None
    delta: float | None
    candidates: int
    total_delta: float | None
    vacuous: bool

    @property
    def joint_confidence(self) -> float | None:
        if self.total_delta is None:
            return None
        return max(0.0, 1.0 - self.total_delta)


def tightest_certificates(results: Iterable[Mapping[str, Any]]) -> list[Headline]:
    """One :class:`Headline` per entry of :data:`HEADLINES` from bound results (records' ``bounds``
    dicts or :meth:`BoundResult.to_dict` output); results of bounds unknown to the catalogue, not
    certificates, or without a value are ignored."""
    catalogue = load_catalogue()
    results = list(results)
    out = []
    for key, certifies, evidence, label in HEADLINES:
        valid = []
        for r in results:
            spec = catalogue.get(r.get("name"))
            if (spec is None or spec.certifies != certifies or spec.evidence != evidence
                    or r.get("status") != "certificate" or r.get("value") is None):
                continue
            valid.append(r)
        if not valid:
            out.append(Headline(key, label, None, None, None, 0, None, False))
            continue
        best = min(valid, key=lambda r: float(r["value"]))
        deltas = [r.get("delta") for r in valid]
        total = None if any(d is None for d in deltas) else float(sum(deltas))
        delta = best.get("delta")
        out.append(Headline(key, label, best["name"], float(best["value"]), None if delta is None else float(delta),
                            len(valid), total, float(best["value"]) >= 1.0))
    return out
