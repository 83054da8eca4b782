"""Selecting and running bounds: name/group selection, typed per-bound options, isolation of failures, the catalogue."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import textwrap
import types
import typing
from typing import Any

from ncbounds.bounds.base import REGISTRY, BoundResult, BoundSpec
from ncbounds.bounds.context import BoundContext
from ncbounds.errors import NCBoundsError, UsageError

#: Modules that register bounds; imported lazily so a missing optional piece never breaks the rest.
BOUND_MODULES = (
    "ncbounds.bounds.certificates",
    "ncbounds.bounds.norm_margin",
    "ncbounds.bounds.pacbayes",
    "ncbounds.bounds.pacbayes_opt",
    "ncbounds.bounds.jiang_norms",
    "ncbounds.bounds.jiang_flatness",
    "ncbounds.bounds.collapse_bounds",
    "ncbounds.bounds.nc_certificates",
    "ncbounds.bounds.predictors",
    "ncbounds.bounds.multilabel",
    "ncbounds.bounds.transfer_bounds",
)

#: Groups whose bounds evaluate perturbed networks many times (Monte Carlo) or optimise a posterior;
#: not in the default set (``certificates`` and ``all`` include them).
EXPENSIVE_GROUPS = ("pac-bayes", "pac-bayes-opt", "jiang-flatness")
#: Groups of bounds for one kind of data only: selected by name or group; on multi-label data the
#: pipeline adds them itself (``bounds.multilabel.run_task_bounds``); default/all/certificates leave them out.
TASK_GROUPS = ("multilabel",)

#: Groups whose bounds read target statistics; in the default set only with --target-data
#: (:func:`ncbounds.bounds.targets.target_selection`).
TARGET_GROUPS = ("transfer",)


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
            names += [n for n, s in catalogue.items() if s.group not in TASK_GROUPS]
        elif item == "default":
            names += [n for n, s in catalogue.items() if s.group not in EXPENSIVE_GROUPS + TASK_GROUPS + TARGET_GROUPS]
        elif item in ("certificates", "predictors"):
            status = item[:-1] if item == "certificates" else "predictor"
            names += [n for n, s in catalogue.items() if s.status == status and s.group not in TASK_GROUPS]
        elif item in {s.group for s in catalogue.values()}:
            names += [n for n, s in catalogue.items() if s.group == item]
        elif item in catalogue:
            names.append(item)
        else:
            raise UsageError(
                f"unknown bound {item!r}; use all, default, certificates, predictors, a group or names from `ncbounds list-bounds`."
            )
    return list(dict.fromkeys(names))


# ------------------------------------------------------------------------------------------------
# per-bound options


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """``value`` (as parsed from ``KEY=VALUE``) in the type a field declares (float, int, bool, str,
    tuple of floats or ints, optionally None; for a union such as ``float | str`` the first member that
    accepts the value, in declaration order); a UsageError naming ``where`` otherwise."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if value is None:
        if type(None) in typing.get_args(annotation):
            return None
        raise UsageError(f"{where} cannot be none.")
    if origin in (typing.Union, types.UnionType) and args:
        first_error = None
        for member in args:
            try:
                return _coerce(value, member, where)
            except UsageError as exc:
                first_error = first_error or exc
        raise first_error
    if origin in (tuple, list) or annotation in (tuple, list):
        items = value if isinstance(value, (tuple, list)) else (value,)
        inner = args[0] if args else float
        return tuple(_coerce(v, inner, where) for v in items)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{where} must be true or false, not {value!r}.")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UsageError(f"{where} must be an integer, not {value!r}.")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UsageError(f"{where} must be a number, not {value!r}.")
    if annotation is str:
        return str(value)
    return value


def options_help(spec: BoundSpec) -> str:
    """One line per setting of a bound: ``key: type = default`` (for ``list-bounds --explain``)."""
    if spec.options is None:
        return ""
    types = _field_types(spec.options)
    lines = []
    for f in dataclasses.fields(spec.options):
        kind = getattr(types[f.name], "__name__", str(types[f.name]).replace("typing.", ""))
        lines.append(f"{spec.name}.{f.name}: {kind} = {f.default!r}")
    return "\n".join(lines)


def resolve_bound_options(raw: dict[str, dict[str, Any]] | None, selected: list[str]) -> dict[str, Any]:
    """Typed settings of the ``selected`` bounds from ``raw`` = {bound or group: {key: value}}.

    A group entry (``jiang-flatness``) applies to every selected bound of that group whose options
    have the key; a bound entry (``pacbayes_gauss``) wins over its group's. Unknown bounds, groups or
    keys, values of the wrong type and values the options class rejects (its ``validate``) are a
    :class:`UsageError` naming the allowed keys. Bounds without a given setting are left out (they use
    their defaults).
    """
    if not raw:
        return {}
    catalogue = load_catalogue()
    groups = {s.group for s in catalogue.values()}
    for target, values in raw.items():
        if target not in catalogue and target not in groups:
            raise UsageError(f"--bound-option {target}.…: {target!r} is neither a bound nor a group of `ncbounds list-bounds`.")
        if target in catalogue and target not in selected:
            raise UsageError(f"--bound-option {target}.…: the bound {target} is not selected; add it to --bounds.")
        members = [target] if target in catalogue else [n for n in selected if catalogue[n].group == target]
        known = {f for n in members if catalogue[n].options is not None for f in _field_types(catalogue[n].options)}
        unknown = sorted(set(values) - known)
        if unknown:
            has = ", ".join(sorted(known)) or "no settings"
            raise UsageError(f"--bound-option {target}.{unknown[0]}: unknown setting; {target} (as selected) has {has}.")
    out: dict[str, Any] = {}
    for name in selected:
        spec = catalogue[name]
        if spec.options is None:
            continue
        types = _field_types(spec.options)
        given = {k: v for k, v in raw.get(spec.group, {}).items() if k in types}
        given.update(raw.get(name, {}))
        if not given:
            continue
        values = {k: _coerce(v, types[k], f"--bound-option {name}.{k}") for k, v in given.items()}
        options = spec.options(**values)
        if hasattr(options, "validate"):
            options.validate()
        out[name] = options
    return out


def options_for(raw: dict[str, dict[str, Any]] | None, names: list[str]) -> dict[str, dict[str, Any]]:
    """The entries of ``raw`` that concern ``names`` (the bound itself or its group), for a context that
    runs only some of the selected bounds (the transfer bounds of a target evaluation)."""
    if not raw:
        return {}
    catalogue = load_catalogue()
    wanted = set(names) | {catalogue[n].group for n in names}
    return {target: values for target, values in raw.items() if target in wanted}


# ------------------------------------------------------------------------------------------------
# running


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
            results.append(spec.not_applicable(str(exc), ctx.options.delta, delta=ctx.options.delta))
        except Exception as exc:  # noqa: BLE001 - one failing bound must not lose the others
            if debug:
                raise
            results.append(spec.not_applicable(f"could not be computed ({type(exc).__name__}: {exc}); re-run with --debug to see why.",
                                               ctx.options.delta, delta=ctx.options.delta))
    return results


def explain(name: str) -> str:
    """The catalogue entry, settings and full docstring of one bound (for `ncbounds list-bounds --explain`)."""
    catalogue = load_catalogue()
    if name not in catalogue:
        raise UsageError(f"unknown bound {name!r}; `ncbounds list-bounds` lists the catalogue.")
    spec = catalogue[name]
    doc = inspect.getdoc(spec.func) or "(no docstring)"
    head = f"{spec.name}  [{spec.status}, group {spec.group}]\nbounds: {spec.bounds}\nreference: {spec.reference}\n"
    if spec.needs:
        head += "statistics from the pass: " + ", ".join(f"{r.key} ({'/'.join(r.splits)})" for r in spec.needs) + "\n"
    if spec.options is not None:
        head += ("settings (--bound-option NAME.KEY=VALUE):\n" + textwrap.indent(options_help(spec), "  ") + "\n"
                 + textwrap.indent(inspect.getdoc(spec.options) or "", "    ") + "\n")
    return head + "\n" + textwrap.indent(doc, "  ")
