"""Transfer bounds (group 'transfer'): m-shot nearest-class-center error on the target classes.

These bounds read **target** statistics: the pipeline evaluates them on a context whose ``train`` and
``test`` are the target splits (the frozen network's features of data it never saw) and whose
``target`` holds the penultimate few-shot results of the target test split. They are never evaluated
on the source context. Each result says in ``inputs`` which target split it used (``target_split``)
and whether that is target test data (``uses_test_data``: then it is a test-set quantity and the
measured few-shot error on the same split is not an independent check), and carries in
``details['measured_fewshot']`` the measured few-shot error it is read against.

- ``galanti2022_transfer`` (plug-in): 8·(C' − 1)·CDNV·(1 + 1/m), the Galanti, György & Hutter (2022)
  form with the constant proved in :func:`ncbounds.transfer.bounds.galanti2022_transfer`;
- ``luthra_old_transfer``, ``luthra_new_transfer`` (plug-in): the directional-CDNV bounds of the
  ``collapse`` group (:mod:`ncbounds.bounds.collapse_bounds`) on the target classes, m = shots;
- ``nc_cantelli_transfer`` (plug-in): the exact-variance Cantelli bound
  (:func:`ncbounds.bounds.nc_certificates.nc_cantelli`) on the target classes;
- ``fewshot_certificate`` (certificate, target test data): kl⁻¹ of the mean episodic error;
- ``fewshot_population_certificate`` (certificate, target test data): the same turned into a bound on
  the population m-shot error of the target classes (Hoeffding's U-statistic argument).

The plug-in bounds use the target **training** split by default — target data the network never saw,
so its class moments estimate the target population without touching the test split; the bound
option ``split`` (``--bound-option transfer.split=test``) switches to the test split. m: every value of
the shots (``--shots``, default 1, 5, 10); ``value`` is for the first; C' = all target classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ncbounds.bounds.base import REGISTRY, Evaluation, NotApplicable, ReplayRequest, register
from ncbounds.bounds.collapse_bounds import CollapseBoundOptions, luthra_new, luthra_old
from ncbounds.bounds.context import BoundContext
from ncbounds.bounds.nc_certificates import nc_cantelli
from ncbounds.bounds.replay.moments import CLASS_MOMENTS
from ncbounds.bounds.replay.pair_moments import pair_moments_factory
from ncbounds.bounds.targets import TRANSFER_GROUP
from ncbounds.errors import UsageError
from ncbounds.transfer import bounds as pure

__all__ = ["TARGET_PAIR_MOMENTS", "TransferBoundOptions"]

#: Per-class covariances and higher moments on either target split (the Cantelli bound's statistic; a key
#: of its own, since the source's ``pair_moments`` is collected on the test split only).
TARGET_PAIR_MOMENTS = ReplayRequest("target_pair_moments", pair_moments_factory, splits=("train", "test"))

_MSHOT = ("expected m-shot nearest-class-center error on the target classes (fresh samples, all C' = K' target "
          "classes), read against the measured few-shot error")
_EPISODIC = "mean error of m-shot nearest-class-center episodes drawn from the target test split (its features held fixed)"
_POPULATION = "expected m-shot nearest-class-center error of episodes with fresh samples of the target classes"
_REF_EPISODIC = ("kl form of the Chernoff bound for the mean of i.i.d. [0, 1] episode errors (Hoeffding 1963, Thm 1; "
                 "Langford 2005, Thm 3.3); few-shot protocol of Tian et al. 2020")
_REF_POPULATION = (_REF_EPISODIC + "; Hoeffding 1963 §5 (U-statistics as averages of means of independent blocks), "
                   "δ split equally between the two steps")


@dataclass(frozen=True)
class TransferBoundOptions:
    """Settings of the plug-in transfer bounds.

    split: the target split whose class statistics stand in for the target population ('train',
        default: data the network never saw and that the measured few-shot error does not use;
        'test': the split of the few-shot episodes).
    """

    split: str = "train"

    def validate(self) -> None:
        if self.split not in ("train", "test"):
            raise UsageError(f"bound option transfer.split must be 'train' or 'test', not {self.split!r}.")


# ------------------------------------------------------------------------------------------------
# helpers


def _no_delta(reason: str, inputs: dict | None = None) -> NotApplicable:
    return NotApplicable(reason, inputs, delta=None)


def _require_target(ctx: BoundContext) -> dict:
    target = getattr(ctx, "target", None)
    if not target:
        raise _no_delta("needs target statistics: evaluate with --target-data SPEC.")
    return target


def _shots(ctx: BoundContext) -> list[int]:
    if not ctx.options.shots:
        raise _no_delta("no shot counts were given for the target evaluation.")
    return [int(m) for m in ctx.options.shots]


def _measured(target: dict, ways: int, shots: int) -> dict | None:
    for entry in target.get("fewshot") or []:
        if int(entry["ways"]) == int(ways) and int(entry["shots"]) == int(shots) and entry.get("error") is not None:
            return {"ways": int(ways), "shots": int(shots), "error": entry["error"], "ci95": entry.get("ci95"),
                    "episodes": entry.get("episodes")}
    return None


def _annotate(evaluation: Evaluation, ctx: BoundContext, split: str) -> Evaluation:
    target = _require_target(ctx)
    ways = int(ctx.num_classes)
    evaluation.inputs.update(target=target.get("data"), target_split=split, uses_test_data=split == "test", ways=ways)
    evaluation.details["measured_fewshot"] = {str(m): _measured(target, ways, m) for m in _shots(ctx)}
    return evaluation


def _class_moments(ctx: BoundContext, split: str) -> tuple[np.ndarray, np.ndarray]:
    stats = getattr(ctx, split).stats
    present = (stats.counts > 0).cpu().numpy()
    counts = stats.counts.to(dtype=stats.sq_dev.dtype).cpu().numpy()[present]
    return stats.means.cpu().numpy()[present], stats.sq_dev.cpu().numpy()[present] / counts


# ------------------------------------------------------------------------------------------------
# plug-in bounds


@register(bounds=_MSHOT, status="plug-in", group=TRANSFER_GROUP, reference=pure.GALANTI2022_REFERENCE, options=TransferBoundOptions)
def galanti2022_transfer(ctx: BoundContext, opts: TransferBoundOptions) -> Evaluation:
    """Galanti, György & Hutter (2022) CDNV bound on the target classes: 8·(C' − 1)·CDNV·(1 + 1/m).

    CDNV = mean over pairs of target classes of (v_i + v_j)/(2‖μ_i − μ_j‖²) (biased v_c) on the chosen
    target split, C' = the number of target classes. The constant 8 is proved in
    :func:`ncbounds.transfer.bounds.galanti2022_transfer` (the paper's constant could not be confirmed);
    ``details['per_ways']`` also gives the bound for random 5-way tasks (same CDNV, C' = 5).
    Status: ``plug-in`` — a bound for population moments, evaluated with the split's estimates.
    """
    _require_target(ctx)
    shots = _shots(ctx)
    means, variances = _class_moments(ctx, opts.split)
    if len(means) < 2:
        raise _no_delta(f"the target {opts.split} split has fewer than 2 classes.")
    out = pure.galanti2022_transfer(means, variances, shots, split=opts.split)
    if out["value"] is None:
        raise _no_delta(f"two class means of the target {opts.split} split coincide (CDNV undefined).", {"target_split": opts.split})
    per_ways = {str(len(means)): {str(m): v for m, v in out["per_m"].items()}}
    if len(means) > 5:
        per_ways["5"] = {str(m): v for m, v in pure.galanti2022_transfer(means, variances, shots, ways=5)["per_m"].items()}
    evaluation = Evaluation(out["value"], delta=None, inputs={"shots": shots, "cdnv": out["cdnv"], "constant": out["constant"]},
                            details={"per_m": {str(m): v for m, v in out["per_m"].items()}, "per_ways": per_ways,
                                     "formula": "8*(C'-1)*CDNV*(1+1/m)"})
    return _annotate(evaluation, ctx, opts.split)


def _collapse_bound(impl, ctx: BoundContext, opts: TransferBoundOptions) -> Evaluation:
    """The implementation of a registered ``collapse`` bound evaluated on the target context."""
    _require_target(ctx)
    _shots(ctx)
    evaluation = impl.__wrapped__(ctx, CollapseBoundOptions(split=opts.split))
    evaluation.inputs.pop("split", None)
    return _annotate(evaluation, ctx, opts.split)


@register(bounds=_MSHOT, status="plug-in", group=TRANSFER_GROUP, reference=REGISTRY["luthra_old"].reference,
          options=TransferBoundOptions)
def luthra_old_transfer(ctx: BoundContext, opts: TransferBoundOptions) -> Evaluation:
    """Luthra, Yang & Galanti (2025) directional-CDNV bound (``luthra_old``) on the target classes, m = shots.

    Formula, conventions and status exactly as ``ncbounds list-bounds --explain luthra_old``: (C' − 1)·E(a*)
    with α = directional CDNV and β = CDNV of the chosen target split (plug-in).
    """
    return _collapse_bound(luthra_old, ctx, opts)


@register(bounds=_MSHOT, status="plug-in", group=TRANSFER_GROUP, reference=REGISTRY["luthra_new"].reference,
          needs=(CLASS_MOMENTS,), options=TransferBoundOptions)
def luthra_new_transfer(ctx: BoundContext, opts: TransferBoundOptions) -> Evaluation:
    """Luthra, Salunkhe & Galanti (2026) Thm 4.1 (``luthra_new``) on the target classes, m = shots.

    Formula and conventions (unbiased covariances, fourth moments from the replay of the chosen target
    split) exactly as ``ncbounds list-bounds --explain luthra_new``; plug-in.
    """
    return _collapse_bound(luthra_new, ctx, opts)


@register(bounds=_MSHOT, status="plug-in", group=TRANSFER_GROUP, reference=REGISTRY["nc_cantelli"].reference,
          needs=(TARGET_PAIR_MOMENTS,), options=TransferBoundOptions)
def nc_cantelli_transfer(ctx: BoundContext, opts: TransferBoundOptions) -> Evaluation:
    """Exact-variance Cantelli bound (``nc_cantelli``) on the m-shot NCC error of the target classes.

    Σ_i π_i·min(1, Σ_{j≠i} Var Z_ij/(Var Z_ij + (E Z_ij)²)) with the exact moments of the m-shot margin
    computed from the class means, covariances, third and fourth moments of the chosen target split
    (``ncbounds list-bounds --explain nc_cantelli``); m = the first shot count, every m in
    ``details['per_shots']``. Plug-in: rigorous for the population moments.
    """
    _require_target(ctx)
    _shots(ctx)
    summary = getattr(ctx, opts.split)
    extras = {k: v for k, v in summary.extras.items() if k != "pair_moments"}
    if TARGET_PAIR_MOMENTS.key in extras:
        extras["pair_moments"] = extras[TARGET_PAIR_MOMENTS.key]  # the key nc_cantelli reads
    evaluation = nc_cantelli.__wrapped__(dataclasses.replace(ctx, test=dataclasses.replace(summary, extras=extras)))
    evaluation.inputs["split"] = f"target {opts.split} (moments of its empirical class distributions)"
    return _annotate(evaluation, ctx, opts.split)


# ------------------------------------------------------------------------------------------------
# certificates from the episodes


def _settings(ctx: BoundContext) -> list[dict]:
    target = _require_target(ctx)
    entries = [e for e in target.get("fewshot") or [] if e.get("error") is not None]
    if not entries:
        notes = "; ".join(sorted({e.get("note", "") for e in target.get("fewshot") or [] if e.get("note")}))
        raise NotApplicable(f"no few-shot setting could be run on the target test split{': ' + notes if notes else ''}.")
    return entries


def _headline(entries: list[dict], ctx: BoundContext) -> dict:
    """The all-way entry at the first shot count (else the first entry)."""
    shots = [int(m) for m in ctx.options.shots or ()]
    for entry in entries:
        if int(entry["ways"]) == int(ctx.num_classes) and shots and int(entry["shots"]) == shots[0]:
            return entry
    return entries[0]


@register(bounds=_EPISODIC, status="certificate", group=TRANSFER_GROUP, reference=_REF_EPISODIC, evidence="test")
def fewshot_certificate(ctx: BoundContext) -> Evaluation:
    """Episodic certificate kl⁻¹(ē, ln(1/δ)/E) of every few-shot setting (Tian et al. 2020 protocol).

    ē: the mean error of E episodes drawn from the target test split's penultimate features. With
    probability ≥ 1 − δ over the episode draws, the mean episodic error of that split (the features held
    fixed) is at most this value (:func:`ncbounds.transfer.bounds.episodic_certificate`). ``value``: the
    all-way setting at the first shot count; ``details['per_setting']``: every setting, each holding with
    probability ≥ 1 − δ on its own. Uses target test data.
    """
    entries = _settings(ctx)
    delta = ctx.options.delta
    per = [{"ways": int(e["ways"]), "shots": int(e["shots"]), "episodes": int(e["episodes"]), "measured": e["error"],
            "value": pure.episodic_certificate(e["error"], e["episodes"], delta)} for e in entries]
    head = _headline(entries, ctx)
    value = next(p["value"] for p in per if p["ways"] == int(head["ways"]) and p["shots"] == int(head["shots"]))
    return Evaluation(value, inputs={"ways": int(head["ways"]), "shots": int(head["shots"]), "episodes": int(head["episodes"]),
                                     "target": ctx.target.get("data"), "target_split": "test", "uses_test_data": True},
                      details={"per_setting": per, "measured": head["error"]})


@register(bounds=_POPULATION, status="certificate", group=TRANSFER_GROUP, reference=_REF_POPULATION, evidence="test")
def fewshot_population_certificate(ctx: BoundContext) -> Evaluation:
    """Certificate on the population m-shot NCC error of the target classes, from the test episodes.

    kl⁻¹(kl⁻¹(ē, ln(2/δ)/E), ln(2/δ)/k), k = min_c ⌊n_c/(shots + queries)⌋ disjoint complete episodes in
    the target test split (:func:`ncbounds.transfer.bounds.population_certificate`): valid because the
    target test samples are i.i.d. draws of their classes that the network never saw. Unlike
    ``fewshot_certificate`` it covers new samples, not only the episodes of the given split.
    ``value``: the all-way setting at the first shot count; every setting in ``details['per_setting']``
    (None where a class has fewer than shots + queries samples). Uses target test data.
    """
    entries = _settings(ctx)
    counts = (ctx.target.get("counts") or {}).get("test")
    if not counts:
        raise NotApplicable("the class counts of the target test split were not recorded.")
    delta = ctx.options.delta
    per = []
    for e in entries:
        res = pure.population_certificate(e["error"], e["episodes"], counts, e["shots"], e["queries"], delta)
        per.append({"ways": int(e["ways"]), "shots": int(e["shots"]), "episodes": int(e["episodes"]), "measured": e["error"],
                    "blocks": res["blocks"], "episode_bound": res["episode_bound"], "value": res["value"]})
    head = _headline(entries, ctx)
    chosen = next(p for p in per if p["ways"] == int(head["ways"]) and p["shots"] == int(head["shots"]))
    if chosen["value"] is None:
        raise NotApplicable(f"a target test class has fewer than {int(head['shots']) + int(head['queries'])} samples, "
                            "so the split holds no complete independent episode.")
    return Evaluation(chosen["value"], inputs={"ways": chosen["ways"], "shots": chosen["shots"], "episodes": chosen["episodes"],
                                               "blocks": chosen["blocks"], "target": ctx.target.get("data"),
                                               "target_split": "test", "uses_test_data": True},
                      details={"per_setting": per, "measured": head["error"]})
