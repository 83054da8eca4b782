"""Results folder → wide/long tables, exports, Kendall statistics and plots (DESIGN §7).

Synthetic records in the EvalRecord layout (a full grid lr × width × epoch, 12 checkpoints, with
missing values on purpose) are written as one JSON file each into a nested results folder, next to a
failed checkpoint's ``*.error.json`` and a temporary file that must both be skipped. The granulated
Kendall coefficient is checked against a brute-force implementation written here from Jiang et al.
2020 eq. (3)–(5) (explicit loops over the hyperparameter grid, own pair counting).
"""

from __future__ import annotations

import importlib.util
import io
import itertools
import json
import math
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ncbounds.errors import NCBoundsError, UsageError
from ncbounds.report.correlate import correlate_table, default_hparams, granulated_kendall, kendall_table
from ncbounds.report.export import export, long_table
from ncbounds.report.results import load_records, load_results

LRS = (0.1, 0.01)
WIDTHS = (16, 32, 64)
EPOCHS = (1, 2)
PEN_METRICS = ("nc1", "trace_ratio", "separation_fuzziness", "cdnv", "directional_cdnv", "ncc_error", "nc4_mismatch", "margin_median")
LAYER_METRICS = ("nc1", "separation_fuzziness", "cdnv", "ncc_error")
HIDDEN = ("block_1", "block_2")  # layers before the penultimate one (indices 1, 2; penultimate = 3)
BOUNDS = (("test_cp", "certificate"), ("luthra_new", "plug-in"), ("galanti2022", "up-to-constants"), ("nc1_test", "predictor"))


def make_record(i: int, lr: float, width: int, epoch: int, rng: np.random.Generator) -> dict:
    """One synthetic record: errors depend on the hyperparameters, metrics loosely track the errors."""
    test_err = float(np.clip(0.05 + 0.4 * lr + 2.0 / width - 0.02 * epoch + rng.normal(0, 0.01), 0.01, 0.9))
    train_err = float(np.clip(test_err - 0.03 - 0.01 * epoch + rng.normal(0, 0.005), 0.0, 1.0))
    n_train, n_test = 1000, 400

    def metrics(scale: float, names) -> dict:
        out = {}
        for k, name in enumerate(names):
            out[name] = float(scale * (1 + 0.3 * k) * test_err * 10 * math.exp(rng.normal(0, 0.2)))
        return out

    layers = {}
    for index, name in enumerate([*HIDDEN, "penultimate"], start=1):
        names = PEN_METRICS if name == "penultimate" else LAYER_METRICS
        layers[name] = {
            "dim": width, "index": index, "scatter_mode": "none",
            "metrics": {"train": metrics(0.6 ** index, names), "test": metrics(0.8 ** index, names)},
        }
    if i == 3:
        layers["penultimate"]["metrics"]["test"]["nc1"] = None  # undefined metric → NaN, complete cases only
    bounds = []
    for name, status in BOUNDS:
        if name == "galanti2022" and i == 5:
            continue  # absent from one record: NaN value, NaN status and vacuous
        value = {"test_cp": test_err + 0.04, "luthra_new": 5 * test_err + 0.5, "galanti2022": 20 * test_err,
                 "nc1_test": layers["penultimate"]["metrics"]["test"]["nc1"]}[name]
        if name == "luthra_new" and i == 7:
            status, value = "not-applicable", None
        vacuous = bool(status in ("certificate", "plug-in", "up-to-constants") and value is not None and value >= 1)
        bounds.append({"name": name, "value": value, "bounds": "population 0-1 error", "status": status, "delta": 0.05,
                       "inputs": {}, "vacuous": vacuous, "reference": "ref", "reason": None, "details": {}})
    ci = lambda e, n: [max(e - 2 * math.sqrt(e * (1 - e) / n), 0.0), min(e + 2 * math.sqrt(e * (1 - e) / n), 1.0)]  # noqa: E731
    run = f"lr{lr}_w{width}"
    return {
        "checkpoint": {"path": f"/runs/{run}/epoch_{epoch:02d}.pt", "sha256": f"{i:064x}", "format": "state_dict", "wrapper_key": None,
                       "saved_devices": ["cpu"], "prefixes_stripped": []},
        "model": {"arch": f"mlp:width={width}", "arch_kwargs": {}, "num_classes": 10, "num_params": 100 * width},
        "data": {"spec": "digits", "kind": "inputs", "num_classes": 10, "splits": {"train": {"n": n_train}, "test": {"n": n_test}}},
        "errors": {"train": {"error": train_err, "errors": round(train_err * n_train), "n": n_train, "ci95": ci(train_err, n_train)},
                   "test": {"error": test_err, "errors": round(test_err * n_test), "n": n_test, "ci95": ci(test_err, n_test)}},
        "layers": layers,
        "layerwise": {"epsilon": 0.01, "train": {"layerwise_rho": 0.6, "layerwise_r": -0.99},
                      "test": {"layerwise_rho": 0.8, "layerwise_r": -0.98},
                      "effective_depth": 3 if epoch == 2 else None, "effective_depth_layer": "penultimate" if epoch == 2 else None},
        "bounds": bounds,
        "convention": {"name": "canonical", "differences": {}},
        "provenance": {"ncbounds": "0.1.0", "device": "cpu", "seed": i % 2, "created": "2025-01-01T00:00:00+00:00",
                       "hyperparameters": {"lr": lr, "width": width, "epoch": epoch, "seed": i % 2, "opt": "sgd"}},
        "options": {}, "notes": [], "timings": {"total": 1.0},
        "batch": {"root": "/runs", "relative_path": f"{run}/epoch_{epoch:02d}.pt", "options_hash": "abc"},
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    rng = np.random.default_rng(0)
    records = []
    # written in reverse order, so sorting by checkpoint path is exercised
    for i, (lr, width, epoch) in enumerate(itertools.product(LRS, WIDTHS, EPOCHS)):
        rec = make_record(i, lr, width, epoch, rng)
        records.append(rec)
        sub = root / f"lr{lr}_w{width}"
        sub.mkdir(exist_ok=True)
        (sub / f"epoch_{epoch:02d}.json").write_text(json.dumps(rec, indent=1))
    failed = {"checkpoint": "x", "error": "CheckpointError: boom", "exit_code": 1}
    (root / "lr0.1_w16" / "epoch_03.error.json").write_text(json.dumps(failed))
    (root / "lr0.1_w16" / "epoch_04.json.tmp").write_text("{ partial")
    (root / ".epoch_05.json").write_text("{ partial")
    return root, records


@pytest.fixture(scope="module")
def table(folder):
    return load_results(folder[0])


# ---------------------------------------------------------------------------------------------
# reading and the wide table


def test_load_records_skips_failed_and_temporary_files(folder):
    root, records = folder
    loaded = load_records(root)
    assert len(loaded) == len(records) == 12
    assert len(loaded.error_files) == 1 and loaded.error_files[0].endswith("epoch_03.error.json")
    assert len(loaded.skipped["temporary"]) == 2
    assert "1 failed checkpoint" in loaded.summary()
    single = load_records(root / "lr0.1_w16" / "epoch_01.json")
    assert len(single) == 1
    with pytest.raises(NCBoundsError, match="does not exist"):
        load_records(root / "missing")
    with pytest.raises(NCBoundsError, match="failed checkpoint"):
        load_records(root / "lr0.1_w16" / "epoch_03.error.json")


def test_wide_table_one_row_per_checkpoint_with_every_column(table, folder):
    _, records = folder
    assert len(table) == 12
    assert table.attrs["ncbounds"]["error_records"] == 1
    assert list(table["checkpoint"]) == sorted(r["checkpoint"]["path"] for r in records)
    required = [
        "checkpoint", "sha256", "format", "arch", "data", "device", "created", "hp.lr", "hp.width", "hp.epoch", "hp.seed", "hp.opt",
        "train_error", "train_error.lo", "train_error.hi", "test_error", "test_error.lo", "test_error.hi", "gap", "n_train", "n_test",
        *[f"{s}.{m}" for s in ("train", "test") for m in PEN_METRICS],
        "train.layerwise_rho", "train.layerwise_r", "test.layerwise_rho", "test.layerwise_r", "effective_depth",
        *[f"bound.{b}{suffix}" for b, _ in BOUNDS for suffix in ("", ".status", ".vacuous")],
    ]
    missing = [c for c in required if c not in table.columns]
    assert not missing, missing
    assert list(table.columns[:9]) == ["checkpoint", "relative_path", "sha256", "format", "arch", "data", "convention", "device", "created"]
    assert table.columns.get_loc("hp.epoch") < table.columns.get_loc("train_error") < table.columns.get_loc("train.nc1") \
        < table.columns.get_loc("test.nc1") < table.columns.get_loc("bound.test_cp")
    by_path = {r["checkpoint"]["path"]: r for r in records}
    for _, row in table.iterrows():
        rec = by_path[row["checkpoint"]]
        assert row["test_error"] == rec["errors"]["test"]["error"]
        assert row["gap"] == rec["errors"]["test"]["error"] - rec["errors"]["train"]["error"]
        assert row["train_error.hi"] == rec["errors"]["train"]["ci95"][1]
        assert row["train.cdnv"] == rec["layers"]["penultimate"]["metrics"]["train"]["cdnv"]
        assert row["hp.width"] == rec["provenance"]["hyperparameters"]["width"]
    assert table["test.nc1"].isna().sum() == 1
    assert table["bound.galanti2022"].isna().sum() == 1 and table["bound.galanti2022.status"].isna().sum() == 1
    assert table["bound.luthra_new.status"].tolist().count("not-applicable") == 1
    assert table["hp.width"].dtype == np.int64 and table["hp.lr"].dtype == np.float64
    assert table["bound.test_cp.vacuous"].dtype == bool


def test_wide_csv_round_trips_through_pandas(table, folder):
    text = export(folder[1], "csv")
    assert text.count("\n") == len(table) + 1
    back = pd.read_csv(io.StringIO(text))
    pd.testing.assert_frame_equal(back, table, check_exact=True)
    # the DataFrame input gives the same text, and a column choice keeps the order given
    assert export(table, "csv") == text
    chosen = pd.read_csv(io.StringIO(export(table, "csv", columns="test_error,checkpoint,bound.*")))
    assert list(chosen.columns[:3]) == ["test_error", "checkpoint", "bound.test_cp"]
    with pytest.raises(UsageError, match="unknown column"):
        export(table, "csv", columns="test_eror")


def test_long_csv_has_every_quantity(folder):
    _, records = folder
    text = export(records, "csv-long")
    back = pd.read_csv(io.StringIO(text))
    assert list(back.columns) == ["checkpoint", "layer", "split", "quantity", "value", "status"]
    per_record = (
        2 * 4 + 1  # errors (error, lo, hi, n per split) + gap
        + 2 * (len(PEN_METRICS) + len(HIDDEN) * len(LAYER_METRICS))  # metrics of every layer and split
        + 2 * 2 + 1  # layerwise rho, r per split + effective depth
    )
    n_bounds = sum(len(r["bounds"]) for r in records)
    assert len(back) == 12 * per_record + n_bounds
    pd.testing.assert_frame_equal(back, long_table(records), check_exact=True)
    bounds = back[back["status"].notna()]
    assert len(bounds) == n_bounds and set(bounds["status"]) == {s for _, s in BOUNDS} | {"not-applicable"}
    assert set(back["layer"]) == {"-", *HIDDEN, "penultimate"}
    with pytest.raises(UsageError):
        export(load_results(records), "csv-long")


def test_json_export_is_lossless(folder):
    _, records = folder
    back = json.loads(export(records, "json"))
    assert back == records  # input order, every field


def test_latex_is_booktabs_with_escaped_names(table):
    tex = export(table, "latex", columns="checkpoint,test_error,train.nc1,bound.nc1_test,bound.luthra_new.status")
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    lines = tex.splitlines()
    header = lines[lines.index("\\toprule") + 1]
    assert "bound.nc1\\_test" in header and "test\\_error" in header
    assert "_" not in header.replace("\\_", "")
    body = "\n".join(lines[lines.index("\\midrule") + 1 : lines.index("\\bottomrule")])
    assert "lr0.1\\_w16" in body and "_" not in body.replace("\\_", "")
    # numbers to 4 significant digits
    value = table["test_error"].iloc[0]
    assert f"{value:.4g}" in body
    default = export(table, "latex")
    assert "bound.test\\_cp" in default and ".status" not in default


# ---------------------------------------------------------------------------------------------
# Kendall


def test_kendall_table_equals_scipy(table):
    for target in ("test_error", "gap"):
        kt = kendall_table(table, target)
        assert "test_error" not in set(kt["measure"]) and "hp.lr" not in set(kt["measure"])
        assert {"train.nc1", "bound.test_cp", "train_error"} <= set(kt["measure"])
        for row in kt.itertuples(index=False):
            x = table[row.measure].to_numpy(float)
            y = table[target].to_numpy(float)
            keep = ~np.isnan(x) & ~np.isnan(y)
            assert row.n_pairs == keep.sum()
            ref = stats.kendalltau(x[keep], y[keep])  # tau-b
            assert row.tau == pytest.approx(ref.statistic, abs=1e-12, nan_ok=True), row.measure
            assert row.p_value == pytest.approx(ref.pvalue, rel=1e-9, nan_ok=True), row.measure
    assert kt.loc[kt["measure"] == "test.nc1", "n_pairs"].item() == 11
    assert kt.loc[kt["measure"] == "bound.test_cp", "status"].item() == "certificate"


def brute_force_granulated(rows: list[dict], measure: str, target: str, hparams: list[str], variant: str) -> dict:
    """Jiang et al. 2020 eq. (3)–(5), written out: loop over every combination of the other
    hyperparameters, count concordant/discordant pairs inside the group by hand, average."""

    def sign(v):
        return (v > 0) - (v < 0)

    def tau(points):
        n = len(points)
        s = tx = ty = 0
        for a in range(n):
            for b in range(a + 1, n):
                dx = sign(points[a][0] - points[b][0])
                dy = sign(points[a][1] - points[b][1])
                s += dx * dy
                tx += dx == 0
                ty += dy == 0
        pairs = n * (n - 1) / 2
        if variant == "a":
            return s / pairs
        denom = math.sqrt((pairs - tx) * (pairs - ty))
        return s / denom if denom > 0 else float("nan")

    complete = [r for r in rows if all(r[k] is not None and not (isinstance(r[k], float) and math.isnan(r[k]))
                                       for k in (measure, target, *hparams))]
    psi = {}
    skipped = {}
    for hp in hparams:
        others = [h for h in hparams if h != hp]
        grids = [sorted({r[h] for r in complete}) for h in others]
        taus, skip = [], 0
        for combo in itertools.product(*grids):
            group = [r for r in complete if all(r[h] == v for h, v in zip(others, combo, strict=True))]
            if len(group) < 2 or len({r[hp] for r in group}) < 2:
                skip += 1
                continue
            t = tau([(r[measure], r[target]) for r in group])
            if not math.isnan(t):
                taus.append(t)
        psi[hp] = sum(taus) / len(taus) if taus else float("nan")
        skipped[hp] = skip
    good = [v for v in psi.values() if not math.isnan(v)]
    return {"psi": psi, "Psi": sum(good) / len(good), "skipped": skipped}


@pytest.mark.parametrize("variant", ["a", "b"])
@pytest.mark.parametrize("measure,target", [("test.nc1", "test_error"), ("bound.luthra_new", "gap"), ("train.cdnv", "gap")])
def test_granulated_kendall_equals_brute_force(table, measure, target, variant):
    hps = ["hp.lr", "hp.width", "hp.epoch"]
    got = granulated_kendall(table, measure, target, hparams=["lr", "width", "epoch"], variant=variant)
    rows = table[[measure, target, *hps]].to_dict("records")
    ref = brute_force_granulated(rows, measure, target, hps, variant)
    assert got["hparams"] == hps
    for hp in hps:
        assert got["psi"][hp] == pytest.approx(ref["psi"][hp], abs=1e-12), hp
        assert got["groups_skipped"][hp] == ref["skipped"][hp]
    assert got["Psi"] == pytest.approx(ref["Psi"], abs=1e-12)
    if measure == "train.cdnv":  # complete grid: every group used
        assert got["groups"] == {"hp.lr": 6, "hp.width": 4, "hp.epoch": 6} and got["n_dropped"] == 0
        assert got["pairs"] == {"hp.lr": 6, "hp.width": 12, "hp.epoch": 6}
    else:  # one missing value: the rows that shared its group for lr and for epoch are left alone
        assert got["n_dropped"] == 1
        assert got["groups"] == {"hp.lr": 5, "hp.width": 4, "hp.epoch": 5}
        assert got["groups_skipped"] == {"hp.lr": 1, "hp.width": 0, "hp.epoch": 1}
        assert got["pairs"]["hp.width"] == 3 + 3 + 3 + 1  # three groups of 3 widths, one of 2


def test_correlate_table_default_hparams_exclude_seed(table):
    assert default_hparams(table) == ["hp.epoch", "hp.lr", "hp.width"]  # hp.seed varies but is a replicate label; opt is constant
    ct = correlate_table(table, "test_error")
    assert {"psi.epoch", "psi.lr", "psi.width", "Psi", "tau", "p_value", "n_pairs", "groups", "groups_skipped"} <= set(ct.columns)
    row = ct[ct["measure"] == "train.cdnv"].iloc[0]
    g = granulated_kendall(table, "train.cdnv", "test_error")
    assert row["Psi"] == g["Psi"] and row["psi.lr"] == g["psi"]["hp.lr"]
    with pytest.raises(UsageError, match="unknown hyperparameter"):
        granulated_kendall(table, "train.cdnv", "test_error", hparams=["momentum"])


# ---------------------------------------------------------------------------------------------
# plots


def _check_png(path):
    mpimg = pytest.importorskip("matplotlib.image")
    assert path.exists() and path.stat().st_size > 10_000
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
    assert float(img[..., :3].var()) > 1e-3  # not a blank canvas


def test_plots_write_nontrivial_images(table, folder, tmp_path):
    pytest.importorskip("matplotlib")
    from ncbounds.report.plots import plot_bounds, plot_epochs, plot_layers

    _check_png(plot_bounds(table, tmp_path / "bounds.png"))
    _check_png(plot_epochs(table, tmp_path / "epochs.png"))
    _check_png(plot_layers(folder[1][:3], tmp_path / "layers.png"))
    _check_png(plot_layers(folder[1][:1], tmp_path / "layer_one.png"))
    pdf = plot_bounds(table, tmp_path / "bounds.pdf")
    assert pdf.read_bytes()[:4] == b"%PDF"
    with pytest.raises(UsageError, match=r"\.png or \.pdf"):
        plot_bounds(table, tmp_path / "bounds.jpg")


# ---------------------------------------------------------------------------------------------
# optional extras and the commands


def test_missing_extras_give_one_line_messages(table, monkeypatch, tmp_path):
    # `import pyarrow` raises ImportError inside the block only: pandas, imported while pyarrow was
    # there, imports it again in its own later calls (the LaTeX export below)
    with monkeypatch.context() as without_pyarrow:
        without_pyarrow.setitem(sys.modules, "pyarrow", None)
        with pytest.raises(NCBoundsError) as err:
            export(table, "parquet")
    assert "pyarrow" in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setitem(sys.modules, "jinja2", None)
    with pytest.raises(NCBoundsError, match="jinja2"):
        export(table, "latex")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    from ncbounds.report.plots import plot_bounds

    with pytest.raises(NCBoundsError, match=r"pip install 'ncbounds\[plots\]'"):
        plot_bounds(table, tmp_path / "x.png")


def test_parquet_round_trip_when_pyarrow_is_installed(table):
    pytest.importorskip("pyarrow")
    back = pd.read_parquet(io.BytesIO(export(table, "parquet")))
    assert list(back.columns) == list(table.columns) and len(back) == len(table)
    # every value comes back; a missing one is read as None where the table holds NaN (Parquet's null)
    def values(df):
        df = df.reset_index(drop=True).astype(object)
        return df.where(df.notna(), None)

    pd.testing.assert_frame_equal(values(back), values(table))


def test_commands(folder, tmp_path, monkeypatch):
    click = pytest.importorskip("click")
    from click.testing import CliRunner
    from ncbounds.cli.results_cmd import correlate, plot
    from ncbounds.cli.results_cmd import export as export_cmd

    group = click.Group("ncbounds", commands={"export": export_cmd, "correlate": correlate, "plot": plot})
    root = str(folder[0])
    runner = CliRunner()
    res = runner.invoke(group, ["export", root, "--format", "csv"])
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(io.StringIO(res.stdout))) == 12
    assert "1 failed checkpoint" in res.stderr
    out = tmp_path / "t.tex"
    res = runner.invoke(group, ["export", root, "--format", "latex", "--columns", "checkpoint,test_error", "-o", str(out)])
    assert res.exit_code == 0 and "\\toprule" in out.read_text()
    res = runner.invoke(group, ["correlate", root, "--target", "gap"])
    assert res.exit_code == 0 and "bound.test_cp" in res.stdout and "Psi" in res.stdout
    res = runner.invoke(group, ["correlate", root, "--format", "csv"])
    assert res.exit_code == 0 and len(pd.read_csv(io.StringIO(res.stdout))) == len(kendall_table(load_results(folder[0])))
    if importlib.util.find_spec("matplotlib"):
        res = runner.invoke(group, ["plot", root, "--kind", "layers", "-o", str(tmp_path / "l.png")])
        assert res.exit_code == 0 and (tmp_path / "l.png").stat().st_size > 10_000
    res = runner.invoke(group, ["plot", root, "--kind", "bounds", "-o", str(tmp_path / "b.gif")])
    assert res.exit_code == 2 and res.stderr.startswith("error:") and "Traceback" not in res.stderr
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    res = runner.invoke(group, ["export", root, "--format", "parquet", "-o", str(tmp_path / "r.parquet")])
    errors = [line for line in res.stderr.strip().splitlines() if not line.startswith("note: ")]  # notes name skipped files
    assert res.exit_code == 1 and "pyarrow" in res.stderr and len(errors) == 1 and errors[0].startswith("error: ")
    res = runner.invoke(group, ["export", str(tmp_path / "nowhere")])
    assert res.exit_code == 1 and "does not exist" in res.stderr
