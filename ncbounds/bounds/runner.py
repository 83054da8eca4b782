"""Selecting and running bounds: name/group selection, isolation of failures, the catalogue."""

from __future__ import annotations

import importlib
import inspect
import textwrap

from ncbounds.bounds.base import REGISTRY, BoundResult, BoundSpec
from ncbounds.bounds.context import BoundContext
from ncbounds.errors import NCBoundsError, UsageError

#: Modules that register bounds; imported lazily so a missing optional piece never breaks the rest.
BOUND_MODULES = (
    "ncbounds.bounds.certificates",
    "ncbounds.bounds.norm_margin",
    "ncbounds.bounds.pacbayes",
    "ncbounds.bounds.jiang_norms",
    "ncbounds.bounds.jiang_flatness",
    "ncbounds.bounds.collapse_bounds",
    "ncbounds.bounds.nc_certificates",
    "ncbounds.bounds.predictors",
)

#: Groups whose bounds evaluate perturbed networks many times (Monte Carlo); not in the default set.
EXPENSIVE_GROUPS = ("pac-bayes", "jiang-flatness")


def load_catalogue() -> dict[str, BoundSpec]:
    """Import every bound module (registering its bounds) and return the registry."""
    for module in BOUND_MODULES:
        importlib.import_module(module)
    return REGISTRY


def select_bounds(selection: str | None) -> list[str]:
    """Names for a ``--bounds`` value: 'default', 'all', 'none', 'certificates', 'predictors', a group or names."""
    catalogue = load_catalogue()
    if selection is None or selection == "none" or selection == "":
        return []
    names: list[str] = []
    for item in (s.strip() for s in selection.split(",")):
        if item == "all":
            names += list(catalogue)
        elif item == "default":
            names += [n for n, s in catalogue.items() if s.group not in EXPENSIVE_GROUPS]
        elif item in ("certificates", "predictors"):
            status = item[:-1] if item == "certificates" else "predictor"
            names += [n for n, s in catalogue.items() if s.status == status]
        elif item in {s.group for s in catalogue.values()}:
            names += [n for n, s in catalogue.items() if s.group == item]
        elif item in catalogue:
            names.append(item)
        else:
            raise UsageError(
                f"unknown bound {item!r}; use all, default, certificates, predictors, a group or names from `ncbounds list-bounds`."
            )
    return list(dict.fromkeys(names))


def run_bounds(ctx: BoundContext, names: list[str], debug: bool = False) -> list[BoundResult]:
    """Evaluate the named bounds; one that fails becomes 'not-applicable' with the reason (never a crash)."""
    catalogue = load_catalogue()
    results = []
    for name in names:
        spec = catalogue[name]
        try:
            result = spec.func(ctx)
            results.extend(result if isinstance(result, list) else [result])
        except NCBoundsError as exc:
            results.append(BoundResult(name, None, spec.bounds, "not-applicable", spec.reference, ctx.options.delta, reason=str(exc)))
        except Exception as exc:  # noqa: BLE001 - one failing bound must not lose the others
            if debug:
                raise
            results.append(BoundResult(name, None, spec.bounds, "not-applicable", spec.reference, ctx.options.delta,
                                       reason=f"could not be computed ({type(exc).__name__}: {exc}); re-run with --debug to see why."))
    return results


def explain(name: str) -> str:
    """The catalogue entry and full docstring of one bound (for `ncbounds list-bounds --explain`)."""
    catalogue = load_catalogue()
    if name not in catalogue:
        raise UsageError(f"unknown bound {name!r}; `ncbounds list-bounds` lists the catalogue.")
    spec = catalogue[name]
    doc = inspect.getdoc(spec.func) or "(no docstring)"
    head = f"{spec.name}  [{spec.status}, group {spec.group}]\nbounds: {spec.bounds}\nreference: {spec.reference}\n"
    return head + "\n" + textwrap.indent(doc, "  ")
