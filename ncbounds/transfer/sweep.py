"""Across hooked layers: which layer transfers best, and the tunnel-effect summaries (pure).

- :func:`layer_sweep` — for the target NCC error, the linear-probe error and every few-shot setting,
  the layer with the lowest error (ties → the earliest layer in forward order) and that error.
- :func:`covariance_rank` — numerical rank of the feature covariance Σ = X_cᵀX_c/(N − 1) of one layer
  (X_c the centred features): the number of eigenvalues of Σ above λ_max·d·ε_float64 (NumPy's
  ``matrix_rank`` rule applied to the d×d matrix Σ), computed from the smaller of X_cᵀX_c and X_cX_cᵀ
  (same non-zero eigenvalues).
- :func:`tunnel_summary` — Masarczyk, Ostaszewski, Imani, Pascanu, Miłoś & Trzciński (2023), "The
  tunnel effect: building data representations in deep neural networks", NeurIPS: deeper layers of
  over-parameterised networks compress the representation (the rank of the feature covariance drops)
  and lose linear-probe accuracy on other tasks. Reported: the rank per layer and
  ``penultimate_to_best_probe_accuracy`` = (1 − probe error at the penultimate layer)/(1 − the lowest
  probe error over layers), 1 when the penultimate layer is the best (the paper's plots of probe
  accuracy per layer, as one number).
"""

from __future__ import annotations

import numpy as np

from ncbounds.transfer._checks import features_2d

__all__ = ["covariance_rank", "fewshot_key", "layer_sweep", "tunnel_summary"]


def fewshot_key(entry: dict) -> str:
    """``'5way1shot'``: the name of a few-shot setting in sweeps and table columns."""
    return f"{int(entry['ways'])}way{int(entry['shots'])}shot"


def _best(values: list[tuple[str, float | None]]) -> dict:
    present = [(name, v) for name, v in values if v is not None]
    if not present:
        return {"layer": None, "error": None}
    name, value = min(present, key=lambda nv: nv[1])  # min keeps the first of equal values
    return {"layer": name, "error": float(value)}


def layer_sweep(layers: dict[str, dict]) -> dict:
    """Best layer per quantity from {layer name (forward order): :func:`~ncbounds.transfer.layer.layer_transfer` result}.

    Returns {'ncc_error': {'layer', 'error'}, 'probe_error': {...}, 'fewshot': {'5way1shot': {...}, ...}}.
    """
    def error(res: dict, key: str):
        return (res.get(key) or {}).get("error")

    out = {"ncc_error": _best([(n, error(r, "ncc_error")) for n, r in layers.items()]),
           "probe_error": _best([(n, error(r, "probe_error")) for n, r in layers.items()]),
           "fewshot": {}}
    keys: dict[str, None] = {}
    for res in layers.values():
        for entry in res.get("fewshot") or []:
            keys.setdefault(fewshot_key(entry), None)
    for key in keys:
        pairs = []
        for name, res in layers.items():
            match = [e for e in res.get("fewshot") or [] if fewshot_key(e) == key]
            pairs.append((name, match[0].get("error") if match else None))
        out["fewshot"][key] = _best(pairs)
    return out


def covariance_rank(features) -> int:
    """Numerical rank of the covariance of ``features`` (N, d): eigenvalues above λ_max·d·ε_float64
    (module docstring); 0 for constant features."""
    x = features_2d(features)
    xc = x - x.mean(axis=0)
    n, d = xc.shape
    gram = xc.T @ xc if d <= n else xc @ xc.T
    eig = np.linalg.eigvalsh(gram) / max(n - 1, 1)
    top = float(eig.max())
    if top <= 0:
        return 0
    return int(np.sum(eig > top * d * np.finfo(np.float64).eps))


def tunnel_summary(ranks: dict[str, int | None], probe_errors: dict[str, float | None], penultimate: str) -> dict:
    """{'covariance_rank': {layer: rank}, 'probe_accuracy': {layer: 1 − error}, 'best_probe_layer',
    'penultimate_to_best_probe_accuracy'} (None where undefined)."""
    acc = {name: (None if e is None else 1.0 - float(e)) for name, e in probe_errors.items()}
    best = _best([(n, e) for n, e in probe_errors.items()])
    ratio = None
    pen = acc.get(penultimate)
    if best["layer"] is not None and pen is not None and acc[best["layer"]] > 0:
        ratio = pen / acc[best["layer"]]
    return {"covariance_rank": dict(ranks), "probe_accuracy": acc, "best_probe_layer": best["layer"],
            "penultimate_to_best_probe_accuracy": ratio}
