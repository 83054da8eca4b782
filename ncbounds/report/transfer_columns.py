"""Table columns of a record's ``transfer`` object: the wide-table cells and the tidy (long) rows.

Wide table (one row per checkpoint; added after every other column, see :mod:`ncbounds.report.results`):

* ``transfer.target`` (the target data spec), ``transfer.num_classes``, ``transfer.n_train``, ``transfer.n_test``;
* per reported layer NAME (``penultimate``, ``features.1``, …):
  ``transfer.NAME.ncc_error`` and ``transfer.NAME.probe_error`` (each with ``.lo``/``.hi``, the 95 %
  Clopper–Pearson ends), ``transfer.NAME.fewshot.<W>way<m>shot`` (mean episodic error, with ``.lo``/``.hi``
  the t-interval ends and ``.certificate``), ``transfer.NAME.score.<score>`` (``logme``, ``leep``, ``nce``,
  ``hscore``, ``gbc_spherical``, ``gbc_diagonal``, ``sfda``, ``ncti_seli``, ``ncti_ncc``, ``ncti_vc``) and
  ``transfer.NAME.covariance_rank``;
* the target collapse metrics of the penultimate layer, ``transfer.penultimate.<split>.<metric>``;
* ``transfer.tunnel.penultimate_to_best_probe_accuracy``; the best layers ``transfer.best_layer.ncc_error``,
  ``transfer.best_layer.probe_error``, ``transfer.best_layer.<W>way<m>shot`` (text);
* per transfer bound: ``transfer.bound.<name>`` (value) and ``transfer.bound.<name>.status``.

Long table: one row per checkpoint × layer × split × quantity, every quantity named ``transfer.…``:
the target metrics of every layer (split ``train``/``test`` of the target), ``transfer.ncc_error``,
``transfer.probe_error``, ``transfer.fewshot.<W>way<m>shot`` (split ``test``; ``.lo``, ``.hi``,
``.certificate``), ``transfer.score.<score>`` and ``transfer.covariance_rank`` (split ``train``), the tunnel
ratio and the bounds (layer and split ``-``, ``status`` the bound's status).
"""

from __future__ import annotations

from typing import Any

from ncbounds.transfer.sweep import fewshot_key

__all__ = ["transfer_cells", "transfer_long_rows"]


def _num(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float)) else None


def _interval(prefix: str, res: dict | None, out: dict) -> None:
    res = res or {}
    ci = res.get("ci95") or [None, None]
    out[prefix] = res.get("error")
    out[f"{prefix}.lo"], out[f"{prefix}.hi"] = ci[0], ci[1]


def _layer_values(layer: dict) -> dict[str, Any]:
    """{suffix: value} of one layer's transfer results (suffixes without the layer prefix)."""
    out: dict[str, Any] = {}
    _interval("ncc_error", layer.get("ncc_error"), out)
    _interval("probe_error", layer.get("probe_error"), out)
    for entry in layer.get("fewshot") or []:
        key = f"fewshot.{fewshot_key(entry)}"
        _interval(key, entry, out)
        out[f"{key}.certificate"] = entry.get("certificate")
    for name, value in (layer.get("scores") or {}).items():
        out[f"score.{name}"] = value
    out["covariance_rank"] = layer.get("covariance_rank")
    return out


def transfer_cells(record: dict) -> tuple[dict[str, Any], dict[str, Any]]:
    """(numeric cells, text cells) of the wide table for ``record['transfer']`` ({} , {} without one)."""
    tr = record.get("transfer")
    if not isinstance(tr, dict) or not tr:
        return {}, {}
    target = tr.get("target") or {}
    numbers: dict[str, Any] = {}
    text: dict[str, Any] = {"transfer.target": target.get("data")}
    for key in ("num_classes", "n_train", "n_test"):
        text[f"transfer.{key}"] = target.get(key)
    for name, layer in (tr.get("layers") or {}).items():
        for suffix, value in _layer_values(layer).items():
            numbers[f"transfer.{name}.{suffix}"] = _num(value)
    pen = ((tr.get("layers") or {}).get("penultimate") or {}).get("metrics") or {}
    for split in ("train", "test"):
        for metric, value in (pen.get(split) or {}).items():
            if value is None or isinstance(value, (bool, int, float)):
                numbers[f"transfer.penultimate.{split}.{metric}"] = value
    numbers["transfer.tunnel.penultimate_to_best_probe_accuracy"] = (tr.get("tunnel") or {}).get("penultimate_to_best_probe_accuracy")
    sweep = tr.get("layer_sweep") or {}
    for key in ("ncc_error", "probe_error"):
        text[f"transfer.best_layer.{key}"] = (sweep.get(key) or {}).get("layer")
    for key, best in (sweep.get("fewshot") or {}).items():
        text[f"transfer.best_layer.{key}"] = (best or {}).get("layer")
    for bound in tr.get("bounds") or []:
        numbers[f"transfer.bound.{bound.get('name')}"] = bound.get("value")
        text[f"transfer.bound.{bound.get('name')}.status"] = bound.get("status")
    return numbers, text


def transfer_long_rows(record: dict) -> list[tuple[str, str, str, Any, str | None]]:
    """(layer, split, quantity, value, status) rows of ``record['transfer']`` for the long table."""
    tr = record.get("transfer")
    if not isinstance(tr, dict) or not tr:
        return []
    rows: list[tuple[str, str, str, Any, str | None]] = []
    for name, layer in (tr.get("layers") or {}).items():
        for split in ("train", "test"):
            for metric, value in ((layer.get("metrics") or {}).get(split) or {}).items():
                rows.append((name, split, f"transfer.{metric}", value, None))
        for suffix, value in _layer_values(layer).items():
            split = "train" if suffix.startswith(("score.", "covariance_rank")) else "test"
            rows.append((name, split, f"transfer.{suffix}", value, None))
    ratio = (tr.get("tunnel") or {}).get("penultimate_to_best_probe_accuracy")
    rows.append(("-", "-", "transfer.tunnel.penultimate_to_best_probe_accuracy", ratio, None))
    for bound in tr.get("bounds") or []:
        rows.append(("-", "-", f"transfer.bound.{bound.get('name')}", bound.get("value"), bound.get("status")))
    return rows
