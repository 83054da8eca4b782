"""Terminal rendering of a record's ``transfer`` object: :func:`render_with_transfer` is the report table of
``ncbounds transfer`` and ``ncbounds report --target-data`` (:func:`ncbounds.report.table.render_table` followed
by :func:`render_transfer`)."""

from __future__ import annotations

from ncbounds.report.table import _grid, fmt, render_table

__all__ = ["render_transfer", "render_with_transfer"]

_SCORES = ("logme", "leep", "nce", "hscore", "gbc_spherical", "sfda")


def _error_ci(res: dict | None) -> str:
    if not res or res.get("error") is None:
        return "—"
    lo, hi = res.get("ci95") or (None, None)
    return f"{fmt(res['error'], 3)} [{fmt(lo, 3)}, {fmt(hi, 3)}]"


def _fewshot(entry: dict) -> str:
    if entry.get("error") is None:
        return "—"
    return f"{fmt(entry['error'], 3)} ± {fmt(entry['ci95_halfwidth'], 3)}"


def render_transfer(record) -> str:
    """Target, per-layer errors and scores, layer sweep, tunnel summary and transfer bounds; '' without transfer."""
    tr = record.transfer if hasattr(record, "transfer") else (record or {}).get("transfer")
    if not tr:
        return ""
    t = tr["target"]
    out = [f"transfer to {t['data']}  (K' = {t['num_classes']} classes {t['classes']}, train n = {t['n_train']}, "
           f"test n = {t['n_test']}); NCC and probe: target train → test; few-shot: episodes of the target test split "
           f"(error ± 95% t-interval half-width); scores: target train", ""]
    layers = tr["layers"]
    keys: dict[str, tuple] = {}
    for layer in layers.values():
        for e in layer.get("fewshot") or []:
            keys.setdefault(f"{e['ways']}w{e['shots']}s", (e["ways"], e["shots"]))
    rows = []
    for name, layer in layers.items():
        shots = {(e["ways"], e["shots"]): e for e in layer.get("fewshot") or []}
        rows.append([f"{layer['index']}. {name}", str(layer["dim"]), _error_ci(layer.get("ncc_error")), _error_ci(layer.get("probe_error")),
                     *(_fewshot(shots[k]) if k in shots else "—" for k in keys.values())])
    out += _grid(["layer", "d", "NCC error [95% CI]", "probe error [95% CI]", *keys], rows)
    out.append("")
    rows = [[f"{layer['index']}. {name}", *(fmt((layer.get("scores") or {}).get(s), 4) for s in _SCORES),
             str(layer.get("covariance_rank") if layer.get("covariance_rank") is not None else "—")]
            for name, layer in layers.items()]
    out.append("transferability scores (higher = predicted to transfer better; "
               "NCTI needs a set of models: `ncbounds correlate --against`):")
    out += _grid(["layer", *_SCORES, "cov. rank"], rows)
    sweep, tunnel = tr.get("layer_sweep") or {}, tr.get("tunnel") or {}
    best = [f"{key} {v['layer']} ({fmt(v['error'], 3)})" for key, v in (("NCC", sweep.get("ncc_error") or {}),
                                                                        ("probe", sweep.get("probe_error") or {})) if v.get("layer")]
    best += [f"{key} {v['layer']} ({fmt(v['error'], 3)})" for key, v in (sweep.get("fewshot") or {}).items() if v.get("layer")]
    if best:
        out.append("lowest error: " + "; ".join(best))
    if tunnel.get("penultimate_to_best_probe_accuracy") is not None:
        out.append(f"tunnel effect: penultimate / best-layer ({tunnel['best_probe_layer']}) probe accuracy = "
                   f"{fmt(tunnel['penultimate_to_best_probe_accuracy'], 4)}")
    out.append("")
    if tr.get("bounds"):
        out.append("transfer bounds (m-shot NCC on the target classes), read against the measured few-shot error:")
        rows = []
        for b in tr["bounds"]:
            inputs, details = b.get("inputs") or {}, b.get("details") or {}
            shots = inputs.get("shots", inputs.get("m"))
            m = shots[0] if isinstance(shots, list) and shots else shots
            measured = details.get("measured")
            if measured is None:
                measured = ((details.get("measured_fewshot") or {}).get(str(m)) or {}).get("error")
            split = inputs.get("target_split", "")
            rows.append([b["name"], fmt(b.get("value"), 4), fmt(measured, 4), f"m = {m}" if m is not None else "",
                         b.get("status", ""), f"target {split}" if split else "", "VACUOUS" if b.get("vacuous") else ""])
        out += _grid(["bound", "value", "measured", "shots", "status", "uses", ""], rows)
        reasons = [f"  {b['name']}: {b['reason']}" for b in tr["bounds"] if b.get("status") == "not-applicable" and b.get("reason")]
        if reasons:
            out.append("not applicable:")
            out += reasons
        out.append("")
    if tr.get("notes"):
        out += ["transfer notes:", *(f"- {n}" for n in tr["notes"]), ""]
    return "\n".join(out)


def render_with_transfer(record, per_class: bool | None = None) -> str:
    """The report table (``per_class`` as in :func:`ncbounds.report.table.render_table`), then the transfer
    section when the record has one."""
    text = render_table(record, per_class=per_class)
    transfer = render_transfer(record)
    return f"{text}\n\n{transfer}".rstrip("\n") if transfer else text
