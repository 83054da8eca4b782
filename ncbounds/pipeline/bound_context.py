"""Step 4: the context the bounds get — statistics, weights, sample sizes, typed options, the Gibbs
oracle and the optimised PAC-Bayes engine (the only doors to perturbed-network evaluation) — built
from the passes."""

from __future__ import annotations

import copy

import numpy as np
import torch

from ncbounds.bounds.base import NotApplicable
from ncbounds.bounds.context import BoundContext, BoundOptions, SplitSummary
from ncbounds.bounds.runner import resolve_bound_options
from ncbounds.errors import NCBoundsError
from ncbounds.features import PENULTIMATE
from ncbounds.io.checkpoints import load_checkpoint, load_into_model
from ncbounds.options import EvalOptions


def _load_state(path: str, model: torch.nn.Module, opts: EvalOptions) -> dict[str, torch.Tensor]:
    """The weights of the checkpoint ``path`` as a state_dict keyed like ``model`` (prefixes stripped, CPU)."""
    ckpt = load_checkpoint(path, trust=opts.trust_checkpoint)
    if ckpt.module is not None:
        return {k: v.detach().cpu() for k, v in ckpt.module.state_dict().items()}
    clone = copy.deepcopy(model).cpu()
    load_into_model(clone, ckpt)
    return {k: v.detach().cpu() for k, v in clone.state_dict().items()}


def _input_norms(split) -> dict[str, float]:
    """Σ_i ‖x_i‖² and max_i ‖x_i‖ of the flattened inputs (for the norm-based bounds), in float64 chunks."""
    total, largest = 0.0, 0.0
    flat = split.x.reshape(len(split.x), -1)
    for start in range(0, len(flat), 8192):
        sq = np.square(flat[start : start + 8192], dtype=np.float64).sum(1)
        total += float(sq.sum())
        largest = max(largest, float(np.sqrt(sq.max())))
    return {"sum_sq": total, "max": largest, "m": len(flat)}


def bound_context(prep, splits, head, record, opts, device, num_classes, selected) -> BoundContext:
    def summary(name: str) -> SplitSummary:
        sp = splits[name]
        return SplitSummary(
            n=sp.n_samples,
            errors=sp.error_count,  # multi-label: the subset errors
            margins=sp.logits.margins if sp.logits is not None else None,
            stats=sp.layers[PENULTIMATE],
            projected=sp.projected.get(PENULTIMATE),
            metrics=record.layers[PENULTIMATE]["metrics"][name],
            extras=sp.extras.get(PENULTIMATE, {}),
        )

    init_state = None
    init_path = opts.init or prep.init_checkpoint
    if prep.model is not None and init_path:
        try:
            init_state = _load_state(init_path, prep.model, opts)
        except NCBoundsError as exc:
            record.notes.append(f"the initialization checkpoint could not be used ({exc}); init-based bounds are not applicable.")
    gibbs = pacbayes_opt = None
    if prep.model is not None:
        from ncbounds.perturb import make_gibbs_oracle

        gibbs = make_gibbs_oracle(prep.model, prep.data, device, opts.batch_size)
        pacbayes_opt = _pac_bayes_opt_engine(prep, opts, init_state, device)
    record.options["init"] = init_path
    return BoundContext(
        num_classes=num_classes,
        train=summary("train"),
        test=summary("test"),
        options=BoundOptions(delta=opts.delta, shots=tuple(opts.shots) if opts.shots else None, mc_samples=opts.mc_samples, seed=opts.seed,
                             bound=resolve_bound_options(opts.bound_settings(), selected)),
        head=head,
        model=prep.model,
        init_state=init_state,
        input_shape=tuple(prep.data.input_shape),
        input_norms=_input_norms(prep.data.train) if prep.model is not None else {},
        layerwise=record.layerwise,
        gibbs=gibbs,
        pacbayes_opt=pacbayes_opt,
        layer_fuzziness=[layer["metrics"]["train"]["separation_fuzziness"] for layer in record.layers.values()],
    )


def _pac_bayes_opt_engine(prep, opts: EvalOptions, init_state, device):
    """The optimised PAC-Bayes engine on the training split; the unlabeled pools are the other splits'
    inputs (their labels are never handed over). Runs lazily: only a selected pac-bayes-opt bound calls it."""
    if prep.data.task != "multiclass":
        def refuse(*_args, **_kwargs):
            raise NotApplicable("the optimised PAC-Bayes certificates bound a single-label 0-1 error; this data is multi-label.")
        return refuse
    from ncbounds.pacbayes_opt import PacBayesOptEngine

    prior_state = None
    if opts.prior_samples is not None:  # --prior CKPT (validated: a file, with its training indices)
        prior_state = _load_state(opts.prior, prep.model, opts)
    unlabeled = {name: split.x for name, split in prep.data.splits().items() if name != "train"}
    return PacBayesOptEngine(prep.model, prep.data.train, unlabeled=unlabeled, init_state=init_state,
                             prior_state=prior_state, device=device)
