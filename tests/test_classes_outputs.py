"""Imbalanced and multi-label records through batch, export (wide and long), correlate, the report table,
``plot --kind classes``, the Ray backend and the tutorials.

A folder holds three checkpoints of an MLP trained on ``digits:imbalance=exp:20`` and two of an MLP on a
multi-hot ``npz`` file; the model class (the built-in MLP, from the folder's own ``models.py``) appends
the batch size of every forward call to a file named in its sidecar, so the test sees that each
checkpoint costs exactly one forward pass per split — locally and on Ray workers.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from ncbounds.batch import run_batch
from ncbounds.io.datasets import load_data
from ncbounds.models import build_model
from ncbounds.options import EvalOptions
from ncbounds.report.classes import CLASS_FIELDS, LABEL_FIELDS
from ncbounds.report.correlate import correlate_table
from ncbounds.report.export import export
from ncbounds.report.record import EvalRecord
from ncbounds.report.results import load_records, records_to_frame
from ncbounds.report.table import render_table

REPO = Path(__file__).resolve().parents[1]


def _checkout_cli():
    """The click group of this checkout's ``cli/`` (``ncbounds.cli`` maps to it when installed from here;
    in a second checkout of the repository, an editable install of the first one would map it there)."""
    import importlib.util
    import sys

    import ncbounds.cli

    if Path(ncbounds.cli.__file__).resolve().parent != REPO / "cli":
        for name in [m for m in sys.modules if m == "ncbounds.cli" or m.startswith("ncbounds.cli.")]:
            del sys.modules[name]
        spec = importlib.util.spec_from_file_location("ncbounds.cli", REPO / "cli" / "__init__.py",
                                                      submodule_search_locations=[str(REPO / "cli")])
        module = importlib.util.module_from_spec(spec)
        sys.modules["ncbounds.cli"] = module
        spec.loader.exec_module(module)
    from ncbounds.cli.main import main

    return main


main = _checkout_cli()
IMB_ARCH = {"input_dim": 64, "num_classes": 10, "width": 16, "depth": 2}
ML_ARCH = {"input_dim": 12, "num_classes": 5, "width": 16, "depth": 2}
MODELS = '''\
from ncbounds.models.builtin import MLP


class Counted(MLP):
    """The built-in MLP (same state_dict keys), appending the batch size of each forward call to `counter`."""

    def __init__(self, counter="", **kwargs):
        super().__init__(**kwargs)
        self.counter = counter

    def forward(self, x):
        with open(self.counter, "a") as fh:
            fh.write(f"{len(x)}\\n")
        return super().forward(x)
'''
OPTIONS = dict(device="cpu", bounds="test_cp,test_kl", batch_size=100_000, layers="all", trust_code=True)


@pytest.fixture(scope="module", autouse=True)
def worktree_on_path():
    """Workers (spawned processes, Ray) import this checkout's ncbounds; one torch thread."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


def _train(model, x, y, steps, multilabel=False):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        z = model(x)
        loss = -(torch.log_softmax(z, 1) * y).sum(1).mean() if multilabel else torch.nn.functional.cross_entropy(z, y)
        loss.backward()
        opt.step()
    return model.state_dict()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    (root / "models.py").write_text(MODELS)
    calls = tmp_path_factory.mktemp("calls")
    imb = load_data("digits:imbalance=exp:20")
    x, y = torch.as_tensor(imb.train.x), torch.as_tensor(imb.train.y)
    torch.manual_seed(0)
    model = build_model("mlp:" + ",".join(f"{k}={v}" for k, v in IMB_ARCH.items()))
    for epoch, steps in ((1, 5), (2, 20), (3, 60)):
        torch.save(_train(model, x, y, steps), root / f"imb_{epoch}.pt")
        (root / f"imb_{epoch}.json").write_text(json.dumps({
            "arch": "models.py:Counted", "arch_kwargs": {**IMB_ARCH, "counter": str(calls / f"imb_{epoch}.txt")},
            "data": "digits:imbalance=exp:20", "epoch": epoch}))
    rng = np.random.default_rng(0)
    centers = 2.0 * rng.standard_normal((5, 12))

    def make(n):
        T = np.zeros((n, 5), dtype=np.int64)
        for i in range(n):
            T[i, rng.choice(5, size=1 + int(rng.random() < 0.4), replace=False)] = 1
        return (T @ centers + rng.standard_normal((n, 12))).astype(np.float32), T

    (x_tr, T_tr), (x_te, T_te) = make(240), make(100)
    np.savez(root / "ml.npz", x_train=x_tr, y_train=T_tr, x_test=x_te, y_test=T_te)
    model = build_model("mlp:" + ",".join(f"{k}={v}" for k, v in ML_ARCH.items()))
    for epoch, steps in ((1, 10), (2, 80)):
        torch.save(_train(model, torch.as_tensor(x_tr), torch.as_tensor(T_tr, dtype=torch.float32), steps, True), root / f"ml_{epoch}.pt")
        (root / f"ml_{epoch}.json").write_text(json.dumps({
            "arch": "models.py:Counted", "arch_kwargs": {**ML_ARCH, "counter": str(calls / f"ml_{epoch}.txt")},
            "data": "npz:ml.npz", "epoch": epoch}))
    return {"root": root, "calls": calls, "n": {"imb": (len(imb.train), len(imb.test)), "ml": (240, 100)}}


def _forward_calls(calls: Path) -> dict[str, list[int]]:
    return {p.stem: [int(v) for v in p.read_text().split()] for p in sorted(calls.glob("*.txt"))}


@pytest.fixture(scope="module")
def local(folder, tmp_path_factory):
    for p in folder["calls"].glob("*.txt"):
        p.unlink()
    out = tmp_path_factory.mktemp("local") / "results"
    summary = run_batch(folder["root"], out, EvalOptions(**OPTIONS), progress=False)
    assert summary.failed == 0, summary.failures
    return {"out": out, "calls": _forward_calls(folder["calls"]), "records": load_records(out)}


def test_batch_makes_one_forward_pass_per_split(folder, local):
    assert set(local["calls"]) == {"imb_1", "imb_2", "imb_3", "ml_1", "ml_2"}
    for name, calls in local["calls"].items():
        assert calls == list(folder["n"][name.split("_")[0]]), name


def test_wide_table_has_the_class_metrics_and_the_subset_error(local):
    records = local["records"]
    df = records_to_frame(records)
    assert len(df) == 5
    for col in ("train.nc1_weighted", "test.minority_cos_W", "test.seli_distance_W", "test.etf_cos", "test.hamming_error",
                "test.subset_error", "test.nc1_single", "test.ml_pair_angle"):
        assert col in df.columns, col
    for rec in records:
        row = df[df["checkpoint"] == rec["checkpoint"]["path"]].iloc[0]
        assert row["test_error"] == rec["errors"]["test"]["error"]
        if rec["data"]["task"] == "multilabel":
            assert row["test_error"] == row["test.subset_error"] and np.isnan(row["test.minority_cos_W"])
        else:
            assert row["test.minority_cos_W"] == rec["layers"]["penultimate"]["metrics"]["test"]["minority_cos_W"]
    back = pd.read_csv(io.StringIO(export(records, "csv")))
    pd.testing.assert_frame_equal(back, df, check_exact=True)


def test_long_table_carries_every_per_class_and_per_label_value(local):
    records = local["records"]
    long = pd.read_csv(io.StringIO(export(records, "csv-long")))
    pattern = re.compile(r"(class|label)\[(\d+)\]\.(.+)")
    for rec in records:
        mine = long[long["checkpoint"] == rec["checkpoint"]["path"]]
        rows = mine[mine["quantity"].str.match(pattern)]
        expected = 0
        for layer_name, layer in rec["layers"].items():
            for key, fields in (("per_class", CLASS_FIELDS), ("per_label", LABEL_FIELDS)):
                for split, entries in (layer.get(key) or {}).items():
                    expected += len(entries) * (len(fields) + 1)  # ci95 gives .error.lo and .error.hi
                    for entry in entries:
                        tag = f"{'class' if key == 'per_class' else 'label'}[{entry.get('class', entry.get('label'))}]"
                        got = rows[(rows["layer"] == layer_name) & (rows["split"] == split)].set_index("quantity")["value"]
                        for field in fields:
                            if field == "ci95":
                                lo, hi = entry["ci95"] or (None, None)
                                for suffix, value in ((".error.lo", lo), (".error.hi", hi)):
                                    assert (np.isnan(got[tag + suffix]) if value is None else got[tag + suffix] == value)
                            else:
                                value = entry[field]
                                assert np.isnan(got[f"{tag}.{field}"]) if value is None else got[f"{tag}.{field}"] == value
        assert len(rows) == expected
        kinds = set(rows["quantity"].str.extract(pattern)[0])
        assert kinds == ({"label"} if rec["data"]["task"] == "multilabel" else {"class"})


def test_correlate_ranks_the_new_measures(local):
    df = records_to_frame(local["records"])
    table = correlate_table(df, target="test_error")
    measures = set(table["measure"])
    assert {"test.minority_cos_W", "train.nc1_weighted", "test.hamming_error"} <= measures


def test_report_table_shows_classes_when_imbalanced_or_asked(local, tmp_path):
    records = [EvalRecord.from_dict(r) for r in local["records"]]
    imb = next(r for r in records if r.data["task"] == "multiclass")
    text = render_table(imb)
    assert "classes (penultimate layer" in text and "simplex-ETF cosine −1/(K−1) = -0.1111" in text
    assert "classes (penultimate layer" not in render_table(imb, per_class=False)
    ml = next(r for r in records if r.data["task"] == "multilabel")
    text = render_table(ml)
    assert "multi-label data (decision rule sigmoid" in text and "per-label errors on the test split" in text
    balanced = EvalRecord.from_dict(json.loads(imb.to_json()))
    balanced.classes["max_min_ratio"] = 1.2
    assert "classes (penultimate layer" not in render_table(balanced)
    assert "classes (penultimate layer" in render_table(balanced, per_class=True)


def test_cli_report_per_class_and_plot_classes(folder, local, tmp_path):
    runner = CliRunner()
    ckpt = folder["root"] / "imb_3.pt"
    common = ["report", str(ckpt), "--bounds", "none", "--device", "cpu", "--trust-code", "--quiet"]
    shown = runner.invoke(main, [*common, "--data", "digits"])  # balanced: hidden unless asked
    assert shown.exit_code == 0, shown.output
    assert "classes (penultimate layer" not in shown.stdout
    asked = runner.invoke(main, [*common, "--data", "digits", "--per-class"])
    assert "classes (penultimate layer" in asked.stdout and "NC1 share" in asked.stdout
    plot = tmp_path / "classes.png"
    done = runner.invoke(main, ["plot", str(local["out"]), "--kind", "classes", "-o", str(plot), "--checkpoint", "imb_3"])
    assert done.exit_code == 0, done.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    done = runner.invoke(main, ["plot", str(local["out"]), "--kind", "classes", "-o", str(tmp_path / "ml.pdf"), "--checkpoint", "ml_2"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "ml.pdf").read_bytes()[:4] == b"%PDF"


@pytest.mark.slow
def test_ray_backend_writes_the_same_records_with_one_pass_per_split(folder, local, tmp_path):
    pytest.importorskip("ray")
    for p in folder["calls"].glob("*.txt"):
        p.unlink()
    out = tmp_path / "ray"
    summary = run_batch(folder["root"], out, EvalOptions(**OPTIONS), progress=False, backend="ray", jobs=1, cpus_per_task=1)
    assert summary.failed == 0, summary.failures
    assert _forward_calls(folder["calls"]) == local["calls"]
    ours = {Path(p).name: json.loads(Path(p).read_text()) for p in sorted(map(str, out.glob("*.json")))}
    ref = {Path(p).name: json.loads(Path(p).read_text()) for p in sorted(map(str, local["out"].glob("*.json")))}
    assert ours.keys() == ref.keys()
    for name in ref:
        for key in ("layers", "errors", "bounds", "classes", "data"):
            assert ours[name][key] == ref[name][key], (name, key)


@pytest.mark.slow
def test_tutorials_run_end_to_end(tmp_path):
    pytest.importorskip("matplotlib")
    from ncbounds.demo_classes import run_imbalance_tutorial, run_multilabel_tutorial

    imb = run_imbalance_tutorial(tmp_path / "imb", epochs=(1, 4), progress=False)
    assert [r["epoch"] for r in imb["rows"]] == [1, 4] and imb["minority_classes"] == [5, 6, 7, 8, 9]
    assert imb["counts"]["train"] == [122, 87, 62, 44, 32, 23, 16, 11, 8, 6]
    assert all(r["etf_cos"] == -1 / 9 for r in imb["rows"]) and imb["files"]["plot_classes"].exists()
    ml = run_multilabel_tutorial(tmp_path / "ml", epochs=(1,), progress=False)
    assert ml["rows"][0]["ml_pair_angle"] is not None and 0 <= ml["rows"][0]["test_hamming_error"] <= 1
    assert ml["files"]["csv_long"].exists()
