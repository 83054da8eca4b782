"""Multi-label data end to end: multi-hot files, the record, errors, certificates, mnist1d-pairs.

References are written here or in ``tests/test_multilabel.py`` from Li, Li, Wang & Qu (2024) and the
definitions (store everything, loops): NC1 of the multiplicity-1 samples, the normalized pair angle,
decision rules, subset / Hamming / per-label errors with scipy's beta quantiles, and kl inverses by
plain bisection. Checked against the records of ``ncbounds.evaluate`` on features files and on a model
(one forward pass per split), together with the bounds (single-label ones not applicable with the
reason) and the data checks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

import ncbounds
from ncbounds.errors import DataError, UsageError
from ncbounds.io.datasets import load_data
from ncbounds.models import build_model
from ncbounds.models.builtin import MLP
from ncbounds.report.record import EvalRecord
from tests.reference_collapse import nearest_mean, reference_metrics
from tests.test_multilabel import multilabel_data, ref_cp, ref_decisions, ref_ml_pair_angle, ref_nc1_single, ref_single

TOL = 1e-9
K = 5


def close(a, b, tol=TOL) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=tol, abs_tol=tol)


def kl(q: float, p: float) -> float:
    def term(a, b):
        return 0.0 if a == 0 else a * math.log(a / b)
    return term(q, p) + term(1 - q, 1 - p)


def kl_upper(q: float, c: float) -> float:
    """sup{p ≥ q: kl(q‖p) ≤ c} by bisection (200 halvings)."""
    lo, hi = q, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kl(q, mid) <= c else (lo, mid)
    return hi


def kl_lower(q: float, c: float) -> float:
    """inf{p ≤ q: kl(q‖p) ≤ c} by bisection."""
    lo, hi = 0.0, q
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if kl(q, mid) <= c else (mid, hi)
    return lo


def ref_errors(z, T, rule):
    """Subset, Hamming and per-label errors of a decision rule, by loops."""
    dec = ref_decisions(z, T, rule)
    n = len(T)
    wrong = dec != T.astype(bool)
    subset = int(wrong.any(1).sum())
    per_label = [int(wrong[:, k].sum()) for k in range(T.shape[1])]
    return {"subset": subset, "hamming": wrong.sum() / (n * T.shape[1]), "per_label": per_label, "n": n,
            "fp": [int((dec[:, k] & ~T[:, k].astype(bool)).sum()) for k in range(T.shape[1])]}


@pytest.fixture(scope="module")
def features_case(tmp_path_factory):
    h_tr, T_tr, M = multilabel_data(K=K, seed=0)
    h_te, T_te, _ = multilabel_data(K=K, seed=0, n_single=12, n_pair=9)
    rng = np.random.default_rng(7)
    W = M + 0.3 * rng.standard_normal(M.shape)
    b = -2.0 + 0.1 * rng.standard_normal(K)
    path = tmp_path_factory.mktemp("ml") / "ml.npz"
    np.savez(path, h_train=h_tr, y_train=T_tr, h_test=h_te, y_test=T_te, W=W, b=b)
    return {"path": path, "train": (h_tr, T_tr), "test": (h_te, T_te), "W": W, "b": b}


@pytest.mark.parametrize("rule", ["sigmoid", "top-m"])
def test_record_of_multi_hot_features_matches_the_references(features_case, rule):
    W, b = features_case["W"], features_case["b"]
    rec = ncbounds.evaluate(data=f"features:{features_case['path']}", ml_decision=rule, batch_size=17)
    assert rec.data["task"] == "multilabel" and rec.classes["task"] == "multilabel" and rec.classes["decision_rule"] == rule
    h1_tr, y1_tr = ref_single(*features_case["train"])
    train_means = np.stack([h1_tr[y1_tr == k].mean(0) for k in range(K)])
    for split in ("train", "test"):
        h, T = features_case[split]
        m = rec.layers["penultimate"]["metrics"][split]
        assert close(m["nc1_single"], ref_nc1_single(h, T))
        assert close(m["ml_pair_angle"], ref_ml_pair_angle(h, T)[0])
        h1, y1 = ref_single(h, T)
        single = reference_metrics(h1, y1, K, W=W)
        for key in ("nc2_etf_error_means", "nc2_etf_error_classifier", "nc3_zhu", "nc3_papyan", "cdnv", "separation_fuzziness"):
            assert close(m[key], single[key]), (split, key)
        assert close(m["ncc_error"], np.mean(nearest_mean(h1, train_means) != y1))
        assert "nc4_mismatch" not in m and "nc1" not in m
        # errors of the decision rule
        want = ref_errors(h @ W.T + b, T, rule)
        e = rec.errors[split]
        assert (e["errors"], e["n"], e["kind"], e["decision_rule"]) == (want["subset"], want["n"], "subset", rule)
        assert close(e["error"], want["subset"] / want["n"]) and close(m["subset_error"], e["error"])
        lo, hi = ref_cp(want["subset"], want["n"])
        assert close(e["ci95"][0], lo) and close(e["ci95"][1], hi)
        assert close(e["hamming_error"], want["hamming"]) and close(m["hamming_error"], want["hamming"])
        budget = math.log(2 / 0.05) / want["n"]
        assert close(e["hamming_ci95"][0], kl_lower(want["hamming"], budget))
        assert close(e["hamming_ci95"][1], kl_upper(want["hamming"], budget))
        for k, row in enumerate(rec.layers["penultimate"]["per_label"][split]):
            assert (row["label"], row["errors"], row["positives"], row["false_positives"]) == (k, want["per_label"][k], int(T[:, k].sum()),
                                                                                                want["fp"][k])
            lo, hi = ref_cp(want["per_label"][k], want["n"])
            assert close(row["error"], want["per_label"][k] / want["n"]) and close(row["ci95"][0], lo) and close(row["ci95"][1], hi)
        mult = np.bincount(np.minimum(T.sum(1), 3), minlength=4).tolist()
        assert rec.classes["multiplicity"][split] == mult and rec.classes["counts"][split] == T.sum(0).tolist()
    # certificates: the subset error (test_cp, test_kl) and the Hamming error (test_kl_hamming); the rest not applicable
    bounds = {bd["name"]: bd for bd in rec.bounds}
    want = ref_errors(features_case["test"][0] @ W.T + b, features_case["test"][1], rule)
    k, n = want["subset"], want["n"]
    assert close(bounds["test_cp"]["value"], 1.0 if k == n else sps.beta.ppf(0.95, k + 1, n - k))
    assert close(bounds["test_kl"]["value"], kl_upper(k / n, math.log(1 / 0.05) / n))
    assert close(bounds["test_kl_hamming"]["value"], kl_upper(want["hamming"], math.log(1 / 0.05) / n))
    assert bounds["test_kl_hamming"]["status"] == "certificate" and bounds["test_cp"]["inputs"]["decision_rule"] == rule
    others = [bd for name, bd in bounds.items() if name not in ("test_cp", "test_kl", "test_kl_hamming")]
    assert others and all(bd["status"] == "not-applicable" and "multi-label" in bd["reason"] for bd in others)
    assert [bd["name"] for bd in rec.bounds][:3] == ["test_cp", "test_kl", "test_kl_hamming"]
    # the record is strict JSON and round-trips
    assert EvalRecord.from_dict(rec.to_dict()).to_dict() == rec.to_dict()
    rec.to_json()


def test_sigmoid_rule_leaves_a_zero_logit_out(tmp_path):
    h = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.5]])
    T = np.array([[1, 0], [0, 1], [1, 1], [1, 0]])
    path = tmp_path / "tie.npz"
    np.savez(path, h_train=h, y_train=T, h_test=h, y_test=T, W=np.eye(2), b=np.array([0.0, -0.5]))
    rec = ncbounds.evaluate(data=f"features:{path}", bounds="none")
    # logits (1, −0.5), (0, 0.5), (1, 0.5), (2, 0): the two zero logits are not predicted (σ(0) = 0.5 is not > 0.5),
    # so the decisions are {0}, {1}, {0, 1}, {0} and every sample is right; a rule taking z ≥ 0 would miss two
    assert rec.errors["test"]["errors"] == 0 and rec.errors["test"]["hamming_error"] == 0.0


def test_multilabel_through_a_model_with_one_forward_pass_per_split(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    n_tr, n_te, d = 300, 120, 12
    centers = 2.0 * rng.standard_normal((K, d))

    def make(n):
        T = np.zeros((n, K), dtype=np.int64)
        for i in range(n):
            T[i, rng.choice(K, size=1 + int(rng.random() < 0.4), replace=False)] = 1
        return (T @ centers + rng.standard_normal((n, d))).astype(np.float32), T

    x_tr, T_tr = make(n_tr)
    x_te, T_te = make(n_te)
    np.savez(tmp_path / "ml.npz", x_train=x_tr, y_train=T_tr, x_test=x_te, y_test=T_te)
    arch = f"mlp:input_dim={d},num_classes={K},width=16,depth=2"
    torch.manual_seed(0)
    model = build_model(arch)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    calls = []
    forward = MLP.forward
    monkeypatch.setattr(MLP, "forward", lambda self, x: calls.append(len(x)) or forward(self, x))
    rec = ncbounds.evaluate(str(tmp_path / "m.pt"), arch=arch, data=f"npz:{tmp_path / 'ml.npz'}", layers="all", batch_size=10_000,
                            bounds="default", ml_decision="top-m", device="cpu")
    monkeypatch.undo()
    assert calls == [n_tr, n_te]
    model.eval()
    feats = {}
    model.fc.register_forward_pre_hook(lambda m, i: feats.__setitem__("h", i[0].detach().double().numpy()))
    for split, (x, T) in (("train", (x_tr, T_tr)), ("test", (x_te, T_te))):
        with torch.no_grad():
            z = model(torch.as_tensor(x)).double().numpy()
        want = ref_errors(z, T, "top-m")
        assert rec.errors[split]["errors"] == want["subset"] and close(rec.errors[split]["hamming_error"], want["hamming"])
        m = rec.layers["penultimate"]["metrics"][split]
        assert close(m["nc1_single"], ref_nc1_single(feats["h"], T)) and close(m["ml_pair_angle"], ref_ml_pair_angle(feats["h"], T)[0])
        assert rec.data["splits"][split]["n"] == len(T)
    assert set(rec.layers) == {"features.1", "penultimate"}
    assert "nc1_single" in rec.layers["features.1"]["metrics"]["train"]


def test_multi_hot_data_checks(tmp_path, features_case):
    h, T = features_case["train"]
    bad = T.copy()
    bad[0, 0] = 2
    np.savez(tmp_path / "bad.npz", h_train=h, y_train=bad, h_test=h, y_test=T)
    with pytest.raises(DataError, match="values other than 0 and 1"):
        load_data(f"features:{tmp_path / 'bad.npz'}")
    np.savez(tmp_path / "w.npz", h_train=h, y_train=T, h_test=h, y_test=T, W=np.ones((K + 1, h.shape[1])))
    with pytest.raises(DataError, match="6 rows"):
        load_data(f"features:{tmp_path / 'w.npz'}")
    with pytest.raises(UsageError, match="multi-hot labels"):
        load_data(f"features:{features_case['path']}:classes=0-2")
    np.savez(tmp_path / "x.npz", x_train=h.astype(np.float32), y_train=T, x_test=h.astype(np.float32), y_test=T)
    torch.save(build_model(f"mlp:input_dim={h.shape[1]},num_classes=7,width=8,depth=1").state_dict(), tmp_path / "m.pt")
    with pytest.raises(DataError, match="multi-hot rows of 5 labels but the model has 7 outputs"):
        ncbounds.evaluate(str(tmp_path / "m.pt"), arch=f"mlp:input_dim={h.shape[1]},num_classes=7,width=8,depth=1",
                          data=f"npz:{tmp_path / 'x.npz'}", bounds="none", device="cpu")
    with pytest.raises(UsageError, match="ml_decision"):
        ncbounds.evaluate(data=f"features:{features_case['path']}", ml_decision="argmax")


def test_mnist1d_pairs_are_superposed_signals_with_both_labels():
    base = load_data("mnist1d:n=600,seed=42")
    data = load_data("mnist1d-pairs:n=600,pairs=0.25,seed=3")
    assert data.task == "multilabel" and data.num_classes == 10
    again = load_data("mnist1d-pairs:n=600,pairs=0.25,seed=3")
    assert np.array_equal(again.train.x, data.train.x) and np.array_equal(again.test.y, data.test.y)
    for split in ("train", "test"):
        b, s = getattr(base, split), getattr(data, split)
        m = s.y.sum(1)
        assert sorted(set(m.tolist())) == [1, 2] and int((m == 2).sum()) == round(0.25 * len(m))
        assert data.info["multiplicity"][split] == {"1": int((m == 1).sum()), "2": int((m == 2).sum())}
        for i in range(len(m)):
            assert s.y[i, b.y[i]] == 1  # every sample keeps its own label
            if m[i] == 1:
                assert np.array_equal(s.x[i], b.x[i])
            else:
                other = int(np.flatnonzero(s.y[i] * (np.arange(10) != b.y[i]))[0])
                partners = np.flatnonzero(b.y == other)
                assert np.all(s.x[i] == b.x[i] + b.x[partners], axis=1).any()  # x_i + x_j, j of the other label


def test_multilabel_split_statistics_on_disk_equal_in_memory(features_case):
    from ncbounds.stats.multilabel_split import MultiLabelSplitStatistics

    h, T = features_case["train"]
    W = torch.as_tensor(features_case["W"])
    runs = []
    for budget in (0, 1 << 30):  # 0: every feature goes to the spill file at once
        split = MultiLabelSplitStatistics(K, penultimate="features", memory_budget=budget)
        for i in range(0, len(h), 19):
            hb = torch.as_tensor(h[i : i + 19])
            split.update({"features": hb}, torch.as_tensor(T[i : i + 19]), hb @ W.T)
        split.finish()
        runs.append(split)
    disk, memory = runs
    assert disk.n_samples == len(h) == memory.n_samples and disk.error_count == memory.error_count
    # the file is replayed in chunks of 4096 rows, memory as appended: sums in another order
    assert torch.allclose(disk.projected["features"].within, memory.projected["features"].within, rtol=1e-12, atol=0)
    assert torch.allclose(disk.projected["features"].class_terms, memory.projected["features"].class_terms, rtol=1e-12, atol=0)
    assert disk.ncc["features"].errors == memory.ncc["features"].errors
    assert disk.extras["features"]["multilabel_decisions"] is disk.decisions
