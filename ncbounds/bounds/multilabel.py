"""Bounds on multi-label data: the test-set certificates of the subset and Hamming errors.

On multi-label data (multi-hot labels, Li, Li, Wang & Qu 2024) a sample's decision is a label set.
Two test-set quantities have certificates that assume nothing but i.i.d. test samples:

- the **subset** (exact-match) error, a 0/1 loss per sample: ``test_cp`` and ``test_kl`` of
  :mod:`ncbounds.bounds.certificates` apply unchanged to its count (the pipeline gives them the subset
  errors as the test errors);
- the **Hamming** error, the mean over samples of L_i = (1/K)·#{wrong labels} ∈ [0, 1]:
  :func:`test_kl_hamming`.

Every other bound of the catalogue assumes one label per sample (a multiclass 0-1 error, margins
y-vs-rest, NCC or class statistics of single-label data) and is reported not-applicable with that
reason (:func:`run_task_bounds`). ``test_kl_hamming`` is in its own group ``multilabel``, which the
selections ``default``, ``all``, ``certificates`` leave out on single-label data; on multi-label data
it runs whenever ``test_cp`` or ``test_kl`` is selected.
"""

from __future__ import annotations

import math

from ncbounds.bounds.base import BoundResult, Evaluation, NotApplicable, register
from ncbounds.bounds.context import BoundContext
from ncbounds.stats.binomial import kl_inverse_upper

#: group of the bounds that exist for multi-label data only (left out of the generic selections)
MULTILABEL_GROUP = "multilabel"
#: bounds that hold on multi-label data
MULTILABEL_BOUNDS = ("test_cp", "test_kl", "test_kl_hamming")
SINGLE_LABEL_REASON = ("assumes one label per sample and the data are multi-label; there, only the test-set certificates of "
                       "the subset error (test_cp, test_kl) and of the Hamming error (test_kl_hamming) apply.")


@register(bounds="population Hamming error of the network's multi-label decisions", status="certificate", group=MULTILABEL_GROUP,
          evidence="test",
          reference="Hoeffding (1963), JASA 58, Thm 1 (kl form of the Chernoff bound for [0, 1] variables); "
                    "Langford (2005), JMLR 6, Thm 3.3")
def test_kl_hamming(ctx: BoundContext) -> Evaluation:
    """Test-set kl bound on the Hamming error: h ≤ kl⁻¹(ĥ, ln(1/δ)/n).

    ĥ = (1/(nK)) Σ_i Σ_k 1[decision_ik ≠ t_ik] over the n test samples. The per-sample loss
    L_i = (1/K) Σ_k 1[decision_ik ≠ t_ik] lies in [0, 1] and the test samples are i.i.d., so
    Hoeffding's (1963) bound E e^{λL} ≤ 1 − h + h e^{λ} gives P(ĥ ≤ q) ≤ exp(−n·kl(q‖h)) for q ≤ h,
    exactly as for a binomial proportion (Langford 2005): the kl inverse is a certificate. The decision
    rule (sigmoid or top-m) is recorded in the inputs. Not applicable to single-label data.
    """
    decisions = ctx.test.extras.get("multilabel_decisions")
    if decisions is None:
        raise NotApplicable("needs multi-label (multi-hot) test labels and the network's outputs; "
                            "on single-label data the Hamming error is not defined this way (use test_kl).")
    n, K = decisions.n, decisions.num_classes
    wrong = int((decisions.false_positives + decisions.false_negatives).sum())
    mean = wrong / (n * K)
    budget = math.log(1.0 / ctx.options.delta) / n
    return Evaluation(float(kl_inverse_upper(mean, budget)),
                      inputs={"split": "test", "n": n, "labels": K, "wrong_labels": wrong, "decision_rule": decisions.rule},
                      details={"hamming_error": mean, "kl_budget": budget})


def run_task_bounds(ctx: BoundContext, selected: list[str], task: str, debug: bool = False) -> list[BoundResult]:
    """Run the ``selected`` bounds for data of ``task`` (``'multiclass'`` or ``'multilabel'``).

    Single-label data: the selection as it is. Multi-label data: ``test_cp`` and ``test_kl`` certify
    the subset error (their inputs say so), ``test_kl_hamming`` is added after them when either is
    selected, and every other selected bound is not-applicable with :data:`SINGLE_LABEL_REASON`.
    """
    from ncbounds.bounds.runner import load_catalogue, run_bounds

    if task != "multilabel":
        return run_bounds(ctx, selected, debug=debug)
    catalogue = load_catalogue()
    names = list(selected)
    if any(n in names for n in ("test_cp", "test_kl")) and "test_kl_hamming" not in names:
        last = max(names.index(n) for n in ("test_cp", "test_kl") if n in names)
        names.insert(last + 1, "test_kl_hamming")
    results: list[BoundResult] = []
    for name in names:
        if name in MULTILABEL_BOUNDS:
            for result in run_bounds(ctx, [name], debug=debug):
                if name in ("test_cp", "test_kl") and result.value is not None:
                    decisions = ctx.test.extras.get("multilabel_decisions")
                    result.inputs["error"] = "subset (exact match): a sample counts once if any label is wrong"
                    result.inputs["decision_rule"] = decisions.rule if decisions is not None else None
                results.append(result)
        else:
            results.append(catalogue[name].not_applicable(SINGLE_LABEL_REASON, ctx.options.delta))
    return results


__all__ = ["MULTILABEL_BOUNDS", "MULTILABEL_GROUP", "SINGLE_LABEL_REASON", "run_task_bounds", "test_kl_hamming"]
