"""Step 4: the context the bounds get — statistics, weights, sample sizes, typed options, and the Gibbs
oracle (the only door to perturbed-network evaluation) — built from the passes."""

from __future__ import annotations

import copy

import numpy as np
import torch

from ncbounds.bounds.context import BoundContext, BoundOptions, SplitSummary
from ncbounds.bounds.runner import resolve_bound_options
from ncbounds.errors import NCBoundsError
from ncbounds.features import PENULTIMATE
from ncbounds.io.checkpoints import load_checkpoint, load_into_model
from ncbounds.options import EvalOptions


def _load_init_state(path: str, model: torch.nn.Module, opts: EvalOptions) -> dict[str, torch.Tensor]:
    """The initialization weights as a state_dict keyed like ``model`` (prefixes stripped, CPU)."""
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
            init_state = _load_init_state(init_path, prep.model, opts)
        except NCBoundsError as exc:
            record.notes.append(f"the initialization checkpoint could not be used ({exc}); init-based bounds are not applicable.")
    gibbs = None
    if prep.model is not None:
        from ncbounds.perturb import make_gibbs_oracle

        gibbs = make_gibbs_oracle(prep.model, prep.data, device, opts.batch_size)
    record.options["init"] = init_path
    return BoundContext(
        num_classes=num_classes,
        train=summary("train"),
        test=summary("test"),
        options=BoundOptions(delta=opts.delta, shots=tuple(opts.shots) if opts.shots else None, mc_samples=opts.mc_samples, seed=opts.seed,
                             bound=resolve_bound_options(opts.bound_options, selected)),
        head=head,
        model=prep.model,
        init_state=init_state,
        input_shape=tuple(prep.data.input_shape),
        input_norms=_input_norms(prep.data.train) if prep.model is not None else {},
        layerwise=record.layerwise,
        gibbs=gibbs,
        layer_fuzziness=[layer["metrics"]["train"]["separation_fuzziness"] for layer in record.layers.values()],
    )
