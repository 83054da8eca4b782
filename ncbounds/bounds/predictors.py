"""Collapse-based predictors of generalization (group 'predictors', status 'predictor').

None of these is a bound: each is a number that published work found to correlate with the test
error or the generalization gap, reported so it can be read next to the certificates. Their scale is
arbitrary, so they are never flagged vacuous. All are computed in the canonical conventions (Papyan et
al. 2020's NC1 with /K, Galanti et al. 2022's CDNV) from the penultimate-layer statistics, whatever
convention mode the report shows.
"""

from __future__ import annotations

from ncbounds.bounds.base import Evaluation, NotApplicable, register
from ncbounds.bounds.context import BoundContext, SplitSummary
from ncbounds.metrics.collapse import cdnv, nc1

_BOUNDS = "correlate of the test error / generalization gap"

REF_NC1 = ("Papyan, Han & Donoho (2020), PNAS (NC1 = Tr(Σ_W Σ_B⁺)/K); Hui, Belkin & Nakkiran (2022), "
           "'Limitations of neural collapse for understanding generalization' (collapse measured on test data)")
REF_CDNV = "Galanti, György & Hutter (2022), ICLR, Def. 1 (CDNV); small test CDNV ↔ good NCC / few-shot error"
REF_GAP = "Hui, Belkin & Nakkiran (2022): train collapse need not imply test collapse; NC1_test/NC1_train measures the gap"
REF_RHO = "He & Su (2023), PNAS, 'A law of data separation in deep learning' (D_l ≈ ρ^l·D_0)"


def _nc1(summary: SplitSummary) -> float | None:
    return nc1(summary.stats, projected=summary.projected)


@register(bounds=_BOUNDS, status="predictor", group="predictors", reference=REF_NC1)
def nc1_test(ctx: BoundContext) -> Evaluation:
    """Penultimate-layer NC1 on the **test** split: Tr(Σ_W Σ_B⁺)/K (canonical: Papyan et al. 2020 with /K).

    Reference: Papyan, Han & Donoho (2020); measured on held-out data following Hui, Belkin & Nakkiran
    (2022). Status: ``predictor`` — smaller within-class variability relative to the between-class
    spread on unseen data goes with lower test error; there is no inequality linking the two.
    """
    value = _nc1(ctx.test)
    if value is None:
        raise NotApplicable("test NC1 is undefined: fewer than two test classes, coinciding means, or no second-order "
                            "statistics (span-restricted replay or scatter matrices) were collected.", {"split": "test"})
    return Evaluation(value, inputs={"split": "test", "layer": "penultimate"})


@register(bounds=_BOUNDS, status="predictor", group="predictors", reference=REF_CDNV)
def cdnv_test(ctx: BoundContext) -> Evaluation:
    """Penultimate-layer CDNV on the **test** split: mean over i<j of (v_i + v_j)/(2‖μ_i − μ_j‖²).

    Reference: Galanti, György & Hutter (2022, ICLR), Def. 1. Status: ``predictor`` — the quantity
    that drives their few-shot NCC bound (see the 'galanti2022' bound), reported here as a correlate.
    """
    value = cdnv(ctx.test.stats)
    if value is None:
        raise NotApplicable("test CDNV is undefined: fewer than two test classes or coinciding class means.", {"split": "test"})
    return Evaluation(value, inputs={"split": "test", "layer": "penultimate"})


@register(bounds=_BOUNDS, status="predictor", group="predictors", reference=REF_GAP)
def collapse_gap(ctx: BoundContext) -> Evaluation:
    """NC1_test / NC1_train (canonical NC1 at the penultimate layer on each split).

    Reference: Hui, Belkin & Nakkiran (2022) — collapse on the training set need not carry over to the
    test set; a ratio ≫ 1 flags collapse that does not generalize. Status: ``predictor`` (of the
    generalization gap), not a bound.
    """
    test, train = _nc1(ctx.test), _nc1(ctx.train)
    if test is None or train is None:
        which = " and ".join(s for s, v in (("test", test), ("train", train)) if v is None)
        raise NotApplicable(f"NC1 is undefined on the {which} split (fewer than two classes, coinciding means, "
                            "or no second-order statistics).", {"split": "test/train"})
    if train == 0.0:
        raise NotApplicable("training NC1 is exactly 0 (perfect training collapse), so the ratio is undefined.",
                            {"split": "test/train"})
    return Evaluation(test / train, inputs={"split": "test/train", "layer": "penultimate"},
                      details={"nc1_test": test, "nc1_train": train})


@register(bounds=_BOUNDS, status="predictor", group="predictors", reference=REF_RHO)
def layerwise_rho(ctx: BoundContext) -> Evaluation:
    """He & Su's decay ratio ρ = exp(slope) of the least-squares fit of log D_l on layer index l.

    D_l = Tr(SS_W SS_B⁺) (separation fuzziness) at each hooked layer, in forward order; taken from
    ``ctx.layerwise['test']`` (falling back to the training split). Reference: He & Su (2023, PNAS).
    Status: ``predictor`` — a geometric law of data separation; ρ < 1 (with Pearson r ≈ −1) means the
    classes separate at a steady rate with depth. Not a bound.
    """
    n_layers = len(ctx.layer_fuzziness)
    for split in ("test", "train"):
        entry = ctx.layerwise.get(split) or {}
        rho = entry.get("layerwise_rho")
        if rho is not None:
            return Evaluation(rho, inputs={"split": split, "layers": n_layers or None},
                              details={"layerwise_r": entry.get("layerwise_r")})
    if n_layers < 2:
        raise NotApplicable(f"{n_layers} layer(s) were hooked; the layerwise law needs at least two (run with --layers all).",
                            {"layers": n_layers})
    raise NotApplicable("the separation fuzziness is undefined or zero at some hooked layer (e.g. no second-order "
                        "statistics there), so ρ cannot be fitted.", {"layers": n_layers})
