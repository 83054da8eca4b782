"""`ncbounds transfer` / `evaluate(target_data=…)` end to end on digits: a network trained on classes 0–4,
its frozen features transferred to classes 5–9.

Every number of the record's ``transfer`` object is checked against a computation written here from
features extracted independently (the model run by hand, its penultimate features read as the input
of ``fc``): brute-force NCC, a separate scikit-learn probe pipeline, the store-everything metric
reference, NumPy's matrix rank, the model's own softmax for LEEP. The cost claim is checked by
counting forward calls: one per batch of each split, source and target.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers_models import one_torch_thread, sgd_steps
from ncbounds.cli.main import main
from reference_collapse import reference_metrics
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ncbounds.batch import input_files, options_hash
from ncbounds.errors import UsageError
from ncbounds.io.datasets import load_data
from ncbounds.models import build_model
from ncbounds.models.builtin import MLP
from ncbounds.options import EvalOptions
from ncbounds.pipeline import evaluate
from ncbounds.report.record import EvalRecord
from ncbounds.transfer.fewshot import fewshot_episodes
from ncbounds.transfer.scores import hscore, leep, logme, nce

SOURCE, TARGET = "digits:classes=0-4", "digits:classes=5-9"
ARCH = "mlp:input_dim=64,num_classes=5,width=24,depth=2"


def _train(path, steps=80, seed=0, width=24):
    arch = ARCH.replace("width=24", f"width={width}")
    torch.manual_seed(seed)
    model = build_model(arch)
    src = load_data(SOURCE)
    with one_torch_thread():
        sgd_steps(model, src.train.x, src.train.y, steps=steps, seed=seed)
    torch.save(model.eval().state_dict(), path)
    return model, arch


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("transfer") / "src.pt"
    model, arch = _train(path)
    with one_torch_thread():
        record = evaluate(str(path), arch=arch, data=SOURCE, target_data=TARGET, layers="all", device="cpu", seed=3)
    return model, arch, path, record


def _penultimate(model, x):
    with torch.no_grad():
        h = model.features(torch.as_tensor(x).flatten(1))
        return h.numpy().astype(np.float64), torch.softmax(model.fc(h).double(), 1).numpy()


def test_transfer_object_equals_independent_computations(trained):
    model, _, _, record = trained
    tgt = load_data(TARGET)
    htr, ptr = _penultimate(model, tgt.train.x)
    hte, _ = _penultimate(model, tgt.test.x)
    ytr, yte = tgt.train.y, tgt.test.y
    tr = record.transfer
    assert tr["target"]["classes"] == [5, 6, 7, 8, 9] and tr["target"]["n_train"] == len(ytr) and tr["target"]["n_test"] == len(yte)
    assert list(tr["layers"]) == list(record.layers) == ["features.1", "penultimate"]
    pen = tr["layers"]["penultimate"]
    # NCC with the target-train means, brute force
    means = np.stack([htr[ytr == c].mean(0) for c in range(5)])
    pred = np.argmin(((hte[:, None, :] - means[None]) ** 2).sum(-1), 1)
    assert pen["ncc_error"]["errors"] == int(np.sum(pred != yte)) and pen["ncc_error"]["n"] == len(yte)
    # the probe: a separately built scikit-learn pipeline
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)).fit(htr, ytr)
    assert pen["probe_error"]["error"] == pytest.approx(float(np.mean(probe.predict(hte) != yte)), abs=1e-12)
    # collapse metrics of the target classes against the store-everything reference
    ref_train = reference_metrics(htr, ytr, 5)
    ref_test = reference_metrics(hte, yte, 5, train_means=means)
    for key in ("nc1", "cdnv", "directional_cdnv", "separation_fuzziness", "nc2_etf_error_means"):
        assert pen["metrics"]["train"][key] == pytest.approx(ref_train[key], rel=1e-6), key
        assert pen["metrics"]["test"][key] == pytest.approx(ref_test[key], rel=1e-6), key
    assert pen["metrics"]["test"]["ncc_error"] == pytest.approx(ref_test["ncc_error"], abs=1e-12)
    assert pen["metrics"]["train"].get("nc4_mismatch") is None and "margin_median" not in pen["metrics"]["test"]
    # scores on target train; LEEP/NCE from the model's own softmax
    assert pen["scores"]["logme"] == pytest.approx(logme(htr, ytr), rel=1e-6)
    assert pen["scores"]["hscore"] == pytest.approx(hscore(htr, ytr), rel=1e-6)
    assert pen["scores"]["leep"] == pytest.approx(leep(ptr, ytr), rel=1e-6)
    assert pen["scores"]["nce"] == pytest.approx(nce(ptr, ytr), abs=1e-9)
    assert tr["layers"]["features.1"]["scores"]["leep"] is None
    # few-shot: the same episodes on the independently extracted test features
    entry = next(e for e in pen["fewshot"] if e["shots"] == 5)
    again = fewshot_episodes(hte, yte, 5, 5, queries=15, episodes=600, seed=3)
    assert entry["error"] == pytest.approx(again["error"], abs=1e-6) and entry["episodes"] == 600
    assert [(e["ways"], e["shots"]) for e in pen["fewshot"]] == [(5, 1), (5, 5), (5, 10)]  # 5 classes: all-way = 5-way
    # covariance rank: NumPy's matrix_rank of the d×d covariance of the training features
    assert pen["covariance_rank"] == np.linalg.matrix_rank(np.cov(htr, rowvar=False)) < htr.shape[1]  # a dead ReLU unit


def test_sweep_tunnel_and_bounds_are_consistent(trained):
    tr = trained[3].transfer
    layers = tr["layers"]
    best = min(layers, key=lambda n: layers[n]["probe_error"]["error"])
    assert tr["layer_sweep"]["probe_error"] == {"layer": best, "error": layers[best]["probe_error"]["error"]}
    acc = {n: 1 - layers[n]["probe_error"]["error"] for n in layers}
    assert tr["tunnel"]["penultimate_to_best_probe_accuracy"] == pytest.approx(acc["penultimate"] / max(acc.values()))
    names = [b["name"] for b in tr["bounds"]]
    assert names == ["galanti2022_transfer", "luthra_old_transfer", "luthra_new_transfer", "nc_cantelli_transfer",
                     "fewshot_certificate", "fewshot_population_certificate"]
    assert not {b["name"] for b in trained[3].bounds} & set(names)  # never evaluated on the source statistics
    by = {b["name"]: b for b in tr["bounds"]}
    for name in names[:4]:
        assert by[name]["status"] == "plug-in" and by[name]["inputs"]["uses_test_data"] is False, name
        assert by[name]["inputs"]["target_split"] == "train"
    measured = next(e["error"] for e in layers["penultimate"]["fewshot"] if e["shots"] == 1)
    assert by["fewshot_certificate"]["details"]["measured"] == measured
    assert by["fewshot_certificate"]["value"] >= measured and by["fewshot_certificate"]["inputs"]["uses_test_data"] is True
    assert by["fewshot_population_certificate"]["value"] >= by["fewshot_certificate"]["value"] - 1e-12


def test_one_forward_pass_per_split(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    _, arch = _train(path, steps=10)
    calls = []
    original = MLP.forward
    monkeypatch.setattr(MLP, "forward", lambda self, x: calls.append(len(x)) or original(self, x))
    src, tgt = load_data(SOURCE), load_data(TARGET)
    with one_torch_thread():
        rec = evaluate(str(path), arch=arch, data=SOURCE, target_data=TARGET, layers="all", device="cpu", batch_size=100,
                       bounds="transfer")  # the transfer bounds run no network (a source bound like the path norm may probe it)
    assert len(rec.transfer["bounds"]) == 6
    sizes = [len(src.train), len(src.test), len(tgt.train), len(tgt.test)]
    assert len(calls) == sum(math.ceil(n / 100) for n in sizes)
    assert sum(calls) == sum(sizes)


def test_record_round_trip_and_no_transfer_key_without_target(trained):
    d = trained[3].to_dict()
    assert json.loads(json.dumps(d)) == d and EvalRecord.from_dict(d).to_dict() == d
    plain = evaluate(str(trained[2]), arch=trained[1], data=SOURCE, device="cpu", bounds="none")
    assert "transfer" not in plain.to_dict() and plain.transfer is None


def test_bound_selection_and_identity(tmp_path):
    assert EvalOptions(target_data=TARGET, bounds="test_cp").validate() == ["test_cp"]
    with_target = EvalOptions(target_data=TARGET).validate()
    assert "fewshot_certificate" in with_target and "galanti2022_transfer" in with_target
    assert "fewshot_certificate" not in EvalOptions().validate()
    assert "fewshot_certificate" not in EvalOptions(bounds="all").validate()  # no target: dropped from 'all'
    with pytest.raises(UsageError, match="reads target statistics; add --target-data"):
        EvalOptions(bounds="fewshot_certificate").validate()
    with pytest.raises(UsageError, match="target_data"):
        EvalOptions(target_data="  ").validate()
    EvalOptions(target_data=TARGET, bound_options={"transfer": {"split": "test"}}).validate()
    assert "target_data" not in EvalOptions().identity([])
    assert options_hash(EvalOptions(target_data=TARGET), []) != options_hash(EvalOptions(), [])
    npz = tmp_path / "t.npz"
    np.savez(npz, x_train=np.zeros((4, 64), np.float32), y_train=np.array([0, 0, 1, 1]), x_test=np.zeros((2, 64), np.float32),
             y_test=np.array([0, 1]))
    files = input_files(tmp_path / "m.pt", EvalOptions(data="digits", target_data=f"npz:{npz}"))
    assert files["target"] == [str(npz.resolve())] and "target" not in input_files(tmp_path / "m.pt", EvalOptions(data="digits"))


def test_transfer_split_option_uses_test_moments(trained):
    _, arch, path, _ = trained
    with one_torch_thread():
        rec = evaluate(str(path), arch=arch, data=SOURCE, target_data=TARGET, device="cpu", bounds="galanti2022_transfer",
                       bound_options={"transfer": {"split": "test"}}, shots=(5,))
    (b,) = rec.transfer["bounds"]
    assert b["inputs"]["target_split"] == "test" and b["inputs"]["uses_test_data"] is True
    hte, _ = _penultimate(trained[0], load_data(TARGET).test.x)
    yte = load_data(TARGET).test.y
    mu = np.stack([hte[yte == c].mean(0) for c in range(5)])
    v = np.array([np.mean(np.sum((hte[yte == c] - mu[c]) ** 2, 1)) for c in range(5)])
    pairs = [(v[i] + v[j]) / (2 * np.sum((mu[i] - mu[j]) ** 2)) for i in range(5) for j in range(i + 1, 5)]
    assert b["value"] == pytest.approx(8 * 4 * np.mean(pairs) * (1 + 1 / 5), rel=1e-6)
    assert b["details"]["measured_fewshot"]["5"]["error"] == next(e["error"] for e in rec.transfer["layers"]["penultimate"]["fewshot"])


def test_command_line_transfer_batch_export_and_correlate(tmp_path, trained):
    runner = CliRunner()
    arch, path = trained[1], trained[2]
    out = runner.invoke(main, ["transfer", str(path), "--arch", arch, "--source-data", SOURCE, "--target-data", TARGET,
                               "--device", "cpu", "--bounds", "none", "--format", "json"])
    assert out.exit_code == 0, out.output
    rec = json.loads(out.stdout)
    assert rec["transfer"]["target"]["data"] == TARGET and rec["data"]["spec"] == SOURCE
    table = runner.invoke(main, ["transfer", str(path), "--arch", arch, "--data", SOURCE, "--target-data", TARGET, "--device", "cpu",
                                 "--bounds", "none"])
    assert table.exit_code == 0 and "transfer to digits:classes=5-9" in table.stdout and "probe error" in table.stdout
    report = runner.invoke(main, ["report", str(path), "--arch", arch, "--data", SOURCE, "--target-data", TARGET, "--device", "cpu",
                                  "--bounds", "none"])
    assert report.exit_code == 0 and "transfer to digits:classes=5-9" in report.stdout
    missing = runner.invoke(main, ["transfer", str(path), "--arch", arch, "--data", SOURCE])
    assert missing.exit_code == 2 and "needs --target-data" in missing.output
    clash = runner.invoke(main, ["transfer", str(path), "--arch", arch, "--data", SOURCE, "--source-data", "digits",
                                 "--target-data", TARGET])
    assert clash.exit_code == 2 and "disagree" in clash.output
    runs = tmp_path / "runs"
    runs.mkdir()
    for i, (steps, width) in enumerate(((5, 8), (40, 16), (120, 32), (200, 48))):
        _, a = _train(runs / f"m{i}.pt", steps=steps, seed=i, width=width)
        (runs / f"m{i}.json").write_text(json.dumps({"arch": a, "data": SOURCE, "hparams": {"steps": steps, "width": width}}))
    done = runner.invoke(main, ["batch", str(runs), "--out", str(tmp_path / "res"), "--target-data", TARGET, "--device", "cpu",
                                "--bounds", "none", "--jobs", "1"])
    assert done.exit_code == 0, done.output
    wide = runner.invoke(main, ["export", str(tmp_path / "res"), "--format", "csv", "-o", str(tmp_path / "w.csv")])
    assert wide.exit_code == 0
    import pandas as pd

    df = pd.read_csv(tmp_path / "w.csv")
    for col in ("transfer.target", "transfer.penultimate.probe_error", "transfer.penultimate.probe_error.lo",
                "transfer.penultimate.fewshot.5way5shot", "transfer.penultimate.fewshot.5way5shot.certificate",
                "transfer.penultimate.score.logme", "transfer.penultimate.test.cdnv", "transfer.best_layer.probe_error"):
        assert col in df.columns, col
    assert list(df.columns).index("transfer.target") > list(df.columns).index("test_error")
    long = runner.invoke(main, ["export", str(tmp_path / "res"), "--format", "csv-long"])
    tidy = pd.read_csv(__import__("io").StringIO(long.stdout))
    row = tidy[(tidy.quantity == "transfer.probe_error") & (tidy.layer == "penultimate")]
    assert len(row) == 4 and set(row.split) == {"test"}
    corr = runner.invoke(main, ["correlate", str(tmp_path / "res"), "--against", "transfer.penultimate.probe_error", "--format", "csv"])
    assert corr.exit_code == 0, corr.output
    ranking = pd.read_csv(__import__("io").StringIO(corr.stdout))
    from scipy import stats

    logme_row = ranking[ranking.measure == "transfer.penultimate.score.logme"].iloc[0]
    s, t = df["transfer.penultimate.score.logme"].to_numpy(), -df["transfer.penultimate.probe_error"].to_numpy()
    assert logme_row["kendall_tau"] == pytest.approx(stats.kendalltau(s, t).statistic, abs=1e-12)
    assert logme_row["weighted_tau"] == pytest.approx(stats.weightedtau(s, t).statistic, abs=1e-12)
    assert logme_row["pearson_r"] == pytest.approx(stats.pearsonr(s, t).statistic, abs=1e-12)
    assert "transfer.penultimate.score.ncti" in set(ranking.measure)
    bad = runner.invoke(main, ["correlate", str(tmp_path / "res"), "--against", "transfer.penultimate.probe_eror"])
    assert bad.exit_code == 2 and "did you mean" in bad.output


def test_features_source_and_target_without_a_model():
    src = "gaussian-etf-features:K=6,d=12,n=80,sigma=0.5,seed=1"
    tgt = "gaussian-etf-features:K=5,d=12,n=80,n_test=60,sigma=0.5,seed=2"
    rec = evaluate(data=src, target_data=tgt, bounds="none", shots=(5,))
    tr = rec.transfer
    assert list(tr["layers"]) == ["penultimate"] and tr["target"]["num_classes"] == 5
    x = load_data(tgt)
    assert tr["layers"]["penultimate"]["scores"]["logme"] == pytest.approx(logme(x.train.x, x.train.y), rel=1e-9)
    with pytest.raises(UsageError, match="source is precomputed features"):
        evaluate(data=src, target_data="digits:classes=5-9", bounds="none")


def test_transfer_demo_trains_ranks_and_prints(tmp_path):
    with one_torch_thread():
        out = CliRunner().invoke(main, ["demo", "--transfer", "--out", str(tmp_path), "--epochs", "4"])
    assert out.exit_code == 0, out.output
    assert "ranking against transfer.penultimate.probe_error (lower is better)" in out.stdout
    import pandas as pd

    ranking = pd.read_csv(tmp_path / "transfer" / "ranking.csv")
    assert len(list((tmp_path / "transfer" / "runs").glob("*.pt"))) == 6
    assert {"transfer.penultimate.score.logme", "transfer.penultimate.score.ncti"} <= set(ranking.measure)
    assert (ranking.n == 6).all() and ranking.kendall_tau.between(-1, 1).all()
