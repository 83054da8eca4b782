"""Terminal rendering of an EvalRecord: errors, bounds beside the measured test error, metrics."""

from __future__ import annotations

from ncbounds.bounds.headline import tightest_certificates
from ncbounds.report.classes import render_classes
from ncbounds.report.record import EvalRecord

PENULTIMATE_ROWS = (
    "nc1", "trace_ratio", "separation_fuzziness", "cdnv", "directional_cdnv",
    "nc2_equinorm_means", "nc2_equiangular_means", "nc2_maxangle_means", "nc2_etf_error_means",
    "nc2_equinorm_classifier", "nc2_etf_error_classifier", "nc3_papyan", "nc3_zhu",
    "ncc_error", "nc4_mismatch", "margin_min", "margin_p5", "margin_p10", "margin_median",
)
LAYER_COLUMNS = ("nc1", "separation_fuzziness", "cdnv", "ncc_error")


def fmt(value, digits: int = 4) -> str:
    """Compact number formatting; None → '—'."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    v = float(value)
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}f}"


def _is_number(text: str) -> bool:
    try:
        float(str(text).split(" ")[0].strip("[],"))
        return True
    except ValueError:
        return str(text) == "—"


def _grid(header: list[str], rows: list[list[str]]) -> list[str]:
    """Plain-text table: first column and text columns left-aligned, numeric columns right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    numeric = [i > 0 and all(_is_number(r[i]) or r[i] == "" for r in rows) for i in range(len(header))]

    def line(r):
        cells = (str(c).rjust(w) if numeric[i] else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        return "  ".join(cells).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *map(line, rows)]


def _delta_split(bound: dict) -> str | None:
    """One line on the internal confidence steps of a certificate (Monte-Carlo step, union bounds)."""
    if bound.get("status") != "certificate" or bound.get("value") is None:
        return None
    d, i = bound.get("details") or {}, bound.get("inputs") or {}
    if "e_mc" in d:
        return (f"  {bound['name']}: σ = {fmt(d.get('sigma'))}; Monte-Carlo Gibbs error ê = {fmt(d['e_mc'])} over "
                f"{i.get('mc_samples')} draws → kl upper Ê = {fmt(d.get('e_mc_upper'))} (δ_MC = {fmt(d.get('delta_mc_per_sigma'), 3)} "
                f"per σ); KL/m = {fmt(d.get('kl_over_m'))}; union over {d.get('grid_size')} σ: ln {d.get('grid_size')} = "
                f"{fmt(d.get('union_log_grid'))} (δ_PB = {fmt(d.get('delta_pb_per_sigma'), 3)} per σ)")
    if "gibbs_certificate" in d:  # the deployed network via a certified stochastic surrogate
        return (f"  {bound['name']}: Gibbs certificate {fmt(d['gibbs_certificate'])} at δ = {fmt(d.get('gibbs_delta'), 3)} + "
                f"disagreement with Q {fmt(d.get('disagreement'))} on {i.get('unlabeled_inputs')} unlabeled {i.get('unlabeled_pool')} "
                f"inputs → upper {fmt(d.get('disagreement_upper'))} at δ = {fmt(d.get('delta_disagreement'), 3)}")
    if "mc_upper" in d and "kl_over_n" in d:  # an optimised posterior: Monte-Carlo step, then PAC-Bayes-kl with the λ grid
        mc = i.get("mc") or {}
        draws = f"{mc.get('trials')} per-example draws" if mc.get("mode") == "per-example" else f"{mc.get('draws')} whole-sample draws"
        return (f"  {bound['name']}: ê = {fmt(d['gibbs_error'])} over {draws} → Ê = {fmt(d['mc_upper'])} (δ_MC = "
                f"{fmt(d.get('delta_mc'), 3)}); KL/n = {fmt(d['kl_over_n'])} (n = {i.get('n')}); prior variance λ_{d.get('j')} = "
                f"{fmt(d.get('prior_var'))} from the grid, union cost {fmt(d.get('union_cost'))} (δ_PB = {fmt(d.get('delta_pb'), 3)})")
    if "delta_per_estimate" in i:
        return (f"  {bound['name']}: δ = {fmt(i.get('delta_priors'), 3)} (class frequencies) + {i.get('n_estimates')} "
                f"estimates × {fmt(i.get('delta_per_estimate'), 3)} (Hoeffding means, Maurer–Pontil spreads)")
    if "union_log_cost" in d:
        return f"  {bound['name']}: γ = {fmt(d.get('gamma'))} chosen from a grid; union-bound cost ln(1/w) = {fmt(d['union_log_cost'])}"
    return None


def _headline(bounds: list[dict]) -> list[str]:
    """The tightest certificate of each kind (:mod:`ncbounds.bounds.headline`), above the bound table."""
    rows = []
    for h in tightest_certificates(bounds):
        if h.name is None:
            hint = "--bounds certificates adds them" if h.key != "network_test" else "test_kl and test_cp (default set) give it"
            rows.append([h.label, "—", "none computed", "", "", hint])
            continue
        note = ""
        if h.candidates > 1:
            note = f"smallest of {h.candidates}: as chosen, holds w.p. ≥ {fmt(h.joint_confidence, 3)}"
        rows.append([h.label, fmt(h.value), h.name, fmt(h.delta, 3), "VACUOUS" if h.vacuous else "", note])
    return ["what can be certified (each value alone holds w.p. ≥ 1 − δ; VACUOUS: ≥ 1, says nothing):",
            *_grid(["certifies", "value", "bound", "δ", "", "note"], rows), ""]


def render_table(record: EvalRecord, per_class: bool | None = None) -> str:
    """Human-readable report; the JSON output carries the same numbers losslessly.

    ``per_class``: show the per-class block (:func:`ncbounds.report.classes.render_classes`); None
    shows it when the training counts are imbalanced (largest/smallest > 3) or the data multi-label."""
    r = record
    out: list[str] = []
    src = r.checkpoint["path"] if r.checkpoint else r.data["spec"]
    out.append(f"ncbounds report — {src}")
    if r.model:
        out.append(f"model: {r.model.get('arch')}  ({r.model.get('num_params')} parameters, penultimate = {r.model.get('penultimate')})")
    splits = r.data["splits"]
    out.append(
        f"data: {r.data['spec']}  (K = {r.data['num_classes']}, train n = {splits['train']['n']}, test n = {splits['test']['n']})"
        f"  device: {r.provenance.get('device')}  convention: {r.convention.get('name')}"
    )
    out.append("")
    err_rows = []
    for name in ("train", "test"):
        e = r.errors.get(name)
        if e:
            err_rows.append([f"{name} error", fmt(e["error"]), f"[{fmt(e['ci95'][0])}, {fmt(e['ci95'][1])}]", str(e["n"])])
    if err_rows:
        out += _grid(["measured", "0-1 error", "95% Clopper–Pearson", "n"], err_rows)
        out.append("")
    if r.bounds:
        out += _headline(r.bounds)
        test = r.errors.get("test") or {}
        ci = test.get("ci95") or [None, None]
        out.append(f"bounds, read against the measured test error {fmt(test.get('error'))} "
                   f"(95% CI [{fmt(ci[0])}, {fmt(ci[1])}]):")
        rows = []
        for b in r.bounds:
            flag = "VACUOUS" if b.get("vacuous") else ""
            delta = fmt(b.get("delta"), 3) if b.get("status") == "certificate" else ""
            rows.append([b["name"], fmt(b.get("value")), b.get("status", ""), delta, flag, b.get("bounds", "")])
        out += _grid(["bound", "value", "status", "δ", "", "bounds"], rows)
        steps = [line for b in r.bounds if (line := _delta_split(b))]
        if steps:
            out.append("how δ is spent inside each certificate:")
            out += steps
        reasons = [f"  {b['name']}: {b['reason']}" for b in r.bounds if b.get("status") == "not-applicable" and b.get("reason")]
        if reasons:
            out.append("not applicable:")
            out += reasons
        out.append("")
    pen = r.layers.get("penultimate")
    if pen:
        out.append(f"penultimate layer (d = {pen['dim']}):")
        m = pen["metrics"]
        rows = [[k, fmt(m["train"].get(k)), fmt(m["test"].get(k))] for k in PENULTIMATE_ROWS if k in m["train"]]
        out += _grid(["metric", "train", "test"], rows)
        out.append("")
    if len(r.layers) > 1:
        out.append("layers (train / test):")
        rows = []
        for name, layer in r.layers.items():
            m = layer["metrics"]
            cells = [f"{fmt(m['train'].get(c), 3)} / {fmt(m['test'].get(c), 3)}" for c in LAYER_COLUMNS]
            rows.append([f"{layer['index']}. {name}", str(layer["dim"])] + cells)
        out += _grid(["layer", "d", *LAYER_COLUMNS], rows)
        lw = r.layerwise
        out.append(
            f"He–Su law: rho = {fmt(lw['train']['layerwise_rho'])} (r = {fmt(lw['train']['layerwise_r'])}) train, "
            f"{fmt(lw['test']['layerwise_rho'])} (r = {fmt(lw['test']['layerwise_r'])}) test;  effective depth "
            f"(NCC train error ≤ {lw['epsilon']}): {lw['effective_depth_layer'] or 'not reached'}"
        )
        out.append("")
    out += render_classes(r, per_class, fmt, _grid)
    if r.notes:
        out.append("notes:")
        out += [f"- {n}" for n in r.notes]
        out.append("")
    t = r.timings
    out.append("time: " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()))
    return "\n".join(out)
