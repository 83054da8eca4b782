"""Matching a checkpoint's keys to a model: wrapper prefixes (:func:`strip_prefixes`) and the strict
:func:`load_into_model`, whose errors list missing/unexpected keys and suggest the prefix to strip."""

from __future__ import annotations

import torch

from ncbounds.errors import CheckpointError
from ncbounds.io.checkpoints.base import (
    _ATTRIBUTE_PREFIXES,
    _NBT,
    _WRAPPER_PREFIXES,
    LoadedCheckpoint,
    _list_names,
    _one_line,
)

__all__ = ["load_into_model", "strip_prefixes"]


def _match_score(keys: list[str], model_keys: set[str]) -> tuple[int, int]:
    """(#model keys present, -#unexpected keys), ignoring BatchNorm ``num_batches_tracked``."""
    ks = {k for k in keys if not k.endswith(_NBT)}
    mk = {k for k in model_keys if not k.endswith(_NBT)}
    return len(ks & mk), -len(ks - mk)


def _candidate_prefixes(keys: list[str]) -> list[str]:
    cands: list[str] = []
    for p in _WRAPPER_PREFIXES + _ATTRIBUTE_PREFIXES:
        if any(k.startswith(p) for k in keys):
            cands.append(p)
    counts: dict[str, int] = {}
    for k in keys:
        if "." in k:
            first = k.split(".", 1)[0] + "."
            counts[first] = counts.get(first, 0) + 1
    for p, c in sorted(counts.items(), key=lambda pc: -pc[1]):
        if p not in cands and 2 * c >= len(keys):
            cands.append(p)
    return cands


def strip_prefixes(
    state_dict: dict[str, torch.Tensor], model_keys
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove wrapper prefixes from ``state_dict`` keys so they match ``model_keys``.

    Considers ``module.`` (DataParallel/DDP), ``_orig_mod.`` (``torch.compile``), attribute
    prefixes such as ``model.``/``net.`` (Lightning modules) and any first key component shared
    by at least half the keys, in any combination up to four deep (``model._orig_mod.module.``).
    A prefix shared by only some keys may *select* that sub-tree (dropping the other keys, e.g. a
    Lightning module's loss buffers) when that matches the model better.  Stripping happens only
    when it increases the number of model keys found; returns ``(new_state_dict,
    prefixes_removed)`` with the prefixes in the order they were removed.
    """
    model_keys = set(model_keys)
    orig_keys = list(state_dict.keys())
    base = _match_score(orig_keys, model_keys)
    # best: (score, original keys kept, their new names, prefixes removed)
    best: tuple[tuple[int, int, int], list[str], list[str], list[str]] = (
        (*base, 0), orig_keys, orig_keys, []
    )

    perfect = (len({k for k in model_keys if not k.endswith(_NBT)}), 0)
    seen: set[tuple[str, ...]] = set()

    def search(keys: list[str], kept: list[str], removed: list[str]) -> None:
        """Depth-first search over prefix sequences; ``kept[i]`` is the original of ``keys[i]``."""
        nonlocal best
        if len(removed) == 4 or best[0][:2] == perfect:
            return
        for p in _candidate_prefixes(keys):
            for select in (False, True):
                pairs = [(o, k[len(p):] if k.startswith(p) else k)
                         for o, k in zip(kept, keys, strict=True)
                         if k.startswith(p) or not select]
                if select and len(pairs) == len(keys):
                    continue  # identical to the non-select variant
                new = [k for _, k in pairs]
                if not new or len(set(new)) != len(new):
                    continue  # nothing left, or two keys would collide
                if tuple(new) in seen:
                    continue
                seen.add(tuple(new))
                new_kept = [o for o, _ in pairs]
                score = (*_match_score(new, model_keys), -(len(removed) + 1))
                if score > best[0]:
                    best = (score, new_kept, new, removed + [p])
                search(new, new_kept, removed + [p])

    search(orig_keys, orig_keys, [])
    score, kept, new_keys, removed = best
    if not removed or score[0] <= base[0]:
        return dict(state_dict), []
    return {n: state_dict[o] for o, n in zip(kept, new_keys, strict=True)}, removed


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _dropped_prefix(longer: list[str], shorter: set[str]) -> str | None:
    """The first dotted prefix ``p`` such that some key of ``longer`` is ``p`` + a key of ``shorter``."""
    for k in longer:
        parts = k.split(".")
        for i in range(1, len(parts)):
            p = ".".join(parts[:i]) + "."
            if k[len(p):] in shorter:
                return p
    return None


def _visible_prefix(missing: list[str], unexpected: list[str]) -> str | None:
    """Hint naming a prefix whose removal/addition would turn unexpected keys into missing ones."""
    p = _dropped_prefix(unexpected, set(missing))
    if p is not None:
        return f"strip the prefix '{p}' from the checkpoint keys"
    p = _dropped_prefix(missing, set(unexpected))
    if p is not None:
        return f"the model's keys carry the prefix '{p}' that the checkpoint lacks, so pass the unwrapped model"
    return None


def load_into_model(model: torch.nn.Module, ckpt: LoadedCheckpoint) -> list[str]:
    """Load ``ckpt``'s weights into ``model`` strictly; returns the prefixes that were stripped.

    Wrapper prefixes are removed with :func:`strip_prefixes`.  BatchNorm ``num_batches_tracked``
    entries missing on either side are tolerated (the model keeps its own value).  Any other
    missing or unexpected key, or a shape mismatch, raises :class:`CheckpointError` listing the
    keys and suggesting the prefix to strip or that the architecture differs.
    """
    target = model.state_dict()
    sd, removed = strip_prefixes(ckpt.state_dict, target.keys())

    missing = [k for k in target if k not in sd and not k.endswith(_NBT)]
    unexpected = [k for k in sd if k not in target and not k.endswith(_NBT)]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_list_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_list_names(unexpected)}")
        hint = _visible_prefix(missing, unexpected)
        if hint is None:
            hint = "the architecture likely differs, check --arch / --arch-kwargs"
        raise CheckpointError(
            f"checkpoint {ckpt.path} does not fit the model ({'; '.join(parts)}); {hint}."
        )

    mismatched = [k for k in target if k in sd and sd[k].shape != target[k].shape]
    if mismatched:
        k = mismatched[0]
        n_more = len(mismatched) - 1
        more = f" (and {n_more} more mismatched tensors)" if n_more else ""
        raise CheckpointError(
            f"checkpoint {ckpt.path} does not fit the model: {k} has shape {_shape(sd[k])} in the "
            f"checkpoint but {_shape(target[k])} in the model{more}; the architecture likely "
            "differs, check --arch / --arch-kwargs."
        )

    final = {k: (sd[k] if k in sd else target[k]) for k in target}
    try:
        model.load_state_dict(final, strict=True)
    except RuntimeError as exc:  # e.g. dtype that cannot be copied
        raise CheckpointError(
            f"checkpoint {ckpt.path} could not be copied into the model ({_one_line(exc)}); "
            "check --arch / --arch-kwargs."
        ) from None
    return removed
