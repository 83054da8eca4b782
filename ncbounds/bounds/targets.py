"""Which bounds read target statistics, and how a ``--bounds`` selection is split between the source and the
target evaluation.

Bounds of the groups :data:`ncbounds.bounds.runner.TARGET_GROUPS` (``transfer``) are evaluated only on the
context of a transfer target (:mod:`ncbounds.bounds.transfer_bounds`). This module imports no bound module
itself — the catalogue is loaded through :func:`~ncbounds.bounds.runner.load_catalogue`, in its fixed order,
so importing it early never changes the order in which bounds are registered (and listed in records).
"""

from __future__ import annotations

from ncbounds.bounds.runner import TARGET_GROUPS, load_catalogue
from ncbounds.errors import UsageError

__all__ = ["TRANSFER_GROUP", "split_target_bounds", "target_selection", "transfer_bound_names"]

TRANSFER_GROUP = TARGET_GROUPS[0]


def transfer_bound_names() -> list[str]:
    """The registered bounds that read target statistics, in catalogue order."""
    return [name for name, spec in load_catalogue().items() if spec.group in TARGET_GROUPS]


def target_selection(selection: str | None, selected: list[str], has_target: bool) -> list[str]:
    """The bounds to evaluate given ``--bounds`` (``selection``, resolved to ``selected``) and whether
    target data is given: with target data, ``default`` adds every transfer bound; without it, transfer
    bounds reached through ``all``/``certificates`` are dropped and naming one (or its group) is a
    UsageError."""
    names = transfer_bound_names()
    tokens = {t.strip() for t in (selection or "").split(",")}
    if not has_target:
        explicit = [n for n in selected if n in names and (n in tokens or tokens & set(TARGET_GROUPS))]
        if explicit:
            raise UsageError(f"the bound {explicit[0]} reads target statistics; add --target-data SPEC or leave it out of --bounds.")
        return [n for n in selected if n not in names]
    if "default" in tokens:
        selected = selected + [n for n in names if n not in selected]
    return selected


def split_target_bounds(selected: list[str]) -> tuple[list[str], list[str]]:
    """(bounds of the source evaluation, bounds of the target evaluation) of a selection."""
    names = set(transfer_bound_names())
    return [n for n in selected if n not in names], [n for n in selected if n in names]
