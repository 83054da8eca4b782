"""Per-class breakdown and imbalance geometry in the records of the pipeline (single-label data).

Every number of ``layers.NAME.per_class.SPLIT`` and every imbalance metric of ``layers.NAME.metrics.SPLIT``
is compared, to 1e-9, with store-everything references written from the papers (the references of
``tests/test_imbalance_metrics.py``: loops over classes, d×d matrices, scipy's beta quantiles), fed with
the raw features — from a features file, or hooked out of the model by the test itself. Also: the
per-class errors weighted by n_c give the measured error exactly, the NC1 shares sum to NC1, balanced
data give nc1_weighted = nc1 and SELI distances = ETF errors, the minority split of the test split comes
from the training counts, ``--minority``, the ``hong-ling`` convention, and one forward pass per split.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ncbounds
from ncbounds.errors import UsageError
from ncbounds.io.datasets import load_data
from ncbounds.models import build_model
from ncbounds.models.builtin import MLP
from tests.reference_collapse import class_statistics, etf_error
from tests.test_imbalance_metrics import imbalanced_data, ref_block_cos, ref_nc1_weighted, ref_per_class, ref_seli

TOL = 1e-9
TRAIN_COUNTS = (60, 30, 15, 8, 4)
TEST_COUNTS = (20, 20, 20, 20, 20)


def close(a, b, tol=TOL) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=tol, abs_tol=tol)


def assert_rows(got: list[dict], want: list[dict], keys) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        for key in keys:
            if key == "ci95":
                assert close(g[key][0], w[key][0]) and close(g[key][1], w[key][1]), (g["class"], key, g[key], w[key])
            else:
                assert close(g[key], w[key]), (g["class"], key, g[key], w[key])


def ref_geometry(h, y, K, W, train_counts) -> dict:
    """Imbalance metrics of one split with the minority split and D from ``train_counts``."""
    counts, means, _ = class_statistics(h, y, K)
    Mt = means - means.mean(0)
    n = np.asarray(train_counts, dtype=float)
    minority = n < math.sqrt(n.max() * n.min())
    out = {"nc1_weighted": ref_nc1_weighted(h, y, K), "etf_cos": -1.0 / (K - 1)}
    for name, rows in (("W", W), ("M", Mt)):
        for block, value in ref_block_cos(rows, minority).items():
            out[f"{block}_cos_{name}"] = value
    out.update(ref_seli(W, Mt, n))
    return out, [int(c) for c in np.flatnonzero(minority)]


@pytest.fixture(scope="module")
def features_case(tmp_path_factory):
    """An imbalanced training split and a balanced test split with the same class means, W and b."""
    h_tr, y_tr, W, b = imbalanced_data(TRAIN_COUNTS, seed=3)
    h_te, y_te, _, _ = imbalanced_data(TEST_COUNTS, seed=3)
    path = tmp_path_factory.mktemp("features") / "imbalanced.npz"
    np.savez(path, h_train=h_tr, y_train=y_tr, h_test=h_te, y_test=y_te, W=W, b=b)
    record = ncbounds.evaluate(data=f"features:{path}", bounds="none", batch_size=41)
    return {"path": path, "record": record, "train": (h_tr, y_tr), "test": (h_te, y_te), "W": W, "b": b}


def test_per_class_rows_match_the_reference_on_both_splits(features_case):
    rec, W, b = features_case["record"], features_case["W"], features_case["b"]
    h_tr, y_tr = features_case["train"]
    train_means = class_statistics(h_tr, y_tr, len(W))[1]
    keys = ("n", "errors", "error", "ci95", "variability", "mean_norm", "classifier_norm", "bias", "margin_median", "ncc_error",
            "nc1_share")
    for split in ("train", "test"):
        h, y = features_case[split]
        want, _, _ = ref_per_class(h, y, len(W), W, b, train_means)
        assert_rows(rec.layers["penultimate"]["per_class"][split], want, keys)


def test_weighted_errors_give_the_measured_error_and_shares_sum_to_nc1(features_case):
    rec = features_case["record"]
    for split in ("train", "test"):
        rows = rec.layers["penultimate"]["per_class"][split]
        n = sum(r["n"] for r in rows)
        assert sum(r["n"] * r["error"] for r in rows) / n == pytest.approx(rec.errors[split]["error"], rel=1e-15, abs=0)
        assert sum(r["errors"] for r in rows) == rec.errors[split]["errors"]  # exactly
        assert close(sum(r["nc1_share"] for r in rows), rec.layers["penultimate"]["metrics"][split]["nc1"], 1e-12)


def test_imbalance_metrics_match_the_reference_with_training_counts(features_case):
    rec, W = features_case["record"], features_case["W"]
    for split in ("train", "test"):
        h, y = features_case[split]
        want, minority = ref_geometry(h, y, len(W), W, TRAIN_COUNTS)
        got = rec.layers["penultimate"]["metrics"][split]
        for key, value in want.items():
            assert close(got[key], value), (split, key, got[key], value)
    # the balanced test split is read against the training counts: classes 2, 3, 4 are the minority
    assert minority == [2, 3, 4] == rec.classes["minority"]["classes"]
    classes = rec.classes
    assert classes["task"] == "multiclass" and rec.data["task"] == "multiclass"
    assert classes["counts"] == {"train": list(TRAIN_COUNTS), "test": list(TEST_COUNTS)}
    assert classes["max_min_ratio"] == 15.0
    unit = W / np.linalg.norm(W, axis=1, keepdims=True)
    assert np.allclose(np.array(classes["classifier_cosines"]), unit @ unit.T, rtol=0, atol=1e-12)
    assert any("largest training class has 15×" in note for note in rec.notes)


def test_explicit_minority_and_its_errors(features_case):
    path, W = features_case["path"], features_case["W"]
    rec = ncbounds.evaluate(data=f"features:{path}", bounds="none", minority="0,1")
    assert rec.classes["minority"] == {"rule": "given (--minority)", "classes": [0, 1], "counts_from": "train"}
    want = ref_block_cos(W, np.array([True, True, False, False, False]))
    got = rec.layers["penultimate"]["metrics"]["test"]
    assert close(got["minority_cos_W"], want["minority"]) and close(got["cross_cos_W"], want["cross"])
    with pytest.raises(UsageError, match=r"minority \(--minority\) must list class indices"):
        ncbounds.evaluate(data=f"features:{path}", bounds="none", minority="few")
    with pytest.raises(UsageError, match="outside 0..4"):
        ncbounds.evaluate(data=f"features:{path}", bounds="none", minority="2,7")


def test_hong_ling_convention_makes_nc1_the_weighted_form(features_case):
    path, rec = features_case["path"], features_case["record"]
    hong = ncbounds.evaluate(data=f"features:{path}", bounds="none", convention="hong-ling")
    for split in ("train", "test"):
        canonical = rec.layers["penultimate"]["metrics"][split]
        assert close(hong.layers["penultimate"]["metrics"][split]["nc1"], canonical["nc1_weighted"])
    assert hong.convention["differences"] == {"nc1_frequency_weighted": True}


def test_balanced_data_weighted_nc1_is_nc1_and_seli_is_the_etf_error():
    rec = ncbounds.evaluate(data="gaussian-etf-features:K=6,d=20,n=50,sigma=0.4", bounds="none")
    assert rec.classes["minority"]["classes"] == [] and rec.classes["max_min_ratio"] == 1.0
    for split in ("train", "test"):
        m = rec.layers["penultimate"]["metrics"][split]
        assert close(m["nc1_weighted"], m["nc1"])
        assert close(m["seli_distance_W"], m["nc2_etf_error_classifier"])
        assert close(m["seli_distance_M"], m["nc2_etf_error_means"])
        assert close(m["seli_distance_logits"], m["nc3_zhu"])
        assert m["minority_cos_W"] is None and m["cross_cos_W"] is None  # no minority block
    assert not any("largest training class" in note for note in rec.notes)


def test_a_class_absent_from_training_has_no_seli_target(tmp_path):
    h_tr, y_tr, W, b = imbalanced_data((40, 20, 10, 5), seed=5)
    h_te, y_te, _, _ = imbalanced_data((10, 10, 10, 10), seed=5)
    keep = y_tr != 3
    path = tmp_path / "absent.npz"
    np.savez(path, h_train=h_tr[keep], y_train=y_tr[keep], h_test=h_te, y_test=y_te, W=W, b=b)
    rec = ncbounds.evaluate(data=f"features:{path}", bounds="none")
    test = rec.layers["penultimate"]["metrics"]["test"]
    assert test["seli_distance_W"] is None and test["seli_distance_M"] is None
    assert rec.layers["penultimate"]["metrics"]["train"]["seli_distance_W"] is not None
    row = rec.layers["penultimate"]["per_class"]["train"][3]
    assert row["n"] == 0 and row["error"] is None and row["ncc_error"] is None


# ------------------------------------------------------------------------------------------------
# through a model: every hooked layer, one forward pass per split
# ------------------------------------------------------------------------------------------------


ARCH = "mlp:input_dim=64,num_classes=10,width=24,depth=2"
DATA = "digits:imbalance=exp:20"


@pytest.fixture(scope="module")
def model_case(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(ARCH)
    data = load_data(DATA)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.as_tensor(data.train.x), torch.as_tensor(data.train.y)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    path = tmp_path_factory.mktemp("model") / "ckpt.pt"
    torch.save(model.state_dict(), path)
    return {"path": path, "model": model.eval(), "data": data}


def _hooked(model, x) -> dict[str, np.ndarray]:
    """Features of the first hidden ReLU and the head input, captured by the test's own hooks."""
    out = {}
    handles = [model.features[1].register_forward_hook(lambda m, i, o: out.__setitem__("features.1", o.detach().clone())),
               model.fc.register_forward_pre_hook(lambda m, i: out.__setitem__("penultimate", i[0].detach().clone()))]
    with torch.no_grad():
        logits = model(torch.as_tensor(x))
    for h in handles:
        h.remove()
    return {k: v.double().numpy() for k, v in out.items()}, logits.double().numpy()


def test_every_layer_matches_the_reference_with_one_forward_pass_per_split(model_case, monkeypatch):
    calls = []
    forward = MLP.forward
    monkeypatch.setattr(MLP, "forward", lambda self, x: calls.append(len(x)) or forward(self, x))
    rec = ncbounds.evaluate(str(model_case["path"]), arch=ARCH, data=DATA, layers="all", bounds="test_cp,test_kl",
                            batch_size=100_000, device="cpu")
    monkeypatch.undo()
    data = model_case["data"]
    assert calls == [len(data.train), len(data.test)]  # the one pass per split, nothing else
    model = model_case["model"]
    W = model.fc.weight.detach().double().numpy()
    b = model.fc.bias.detach().double().numpy()
    K = 10
    train_counts = np.bincount(data.train.y, minlength=K)
    assert rec.classes["counts"]["train"] == train_counts.tolist()
    feats = {name: _hooked(model, getattr(data, name).x)[0] for name in ("train", "test")}
    assert set(rec.layers) == {"features.1", "penultimate"}
    for layer in ("features.1", "penultimate"):
        train_means = class_statistics(feats["train"][layer], data.train.y, K)[1]
        for split in ("train", "test"):
            h, y = feats[split][layer], getattr(data, split).y
            want_rows, _, _ = ref_per_class(h, y, K, W if layer == "penultimate" else np.ones((K, h.shape[1])), b, train_means)
            got_rows = rec.layers[layer]["per_class"][split]
            assert_rows(got_rows, want_rows, ("n", "variability", "mean_norm", "ncc_error", "nc1_share"))
            if layer == "penultimate":
                assert_rows(got_rows, want_rows, ("classifier_norm", "bias"))
                # errors and margins come from the logits the network returned (float32), as the pipeline takes them
                z = _hooked(model, getattr(data, split).x)[1]
                pred = z.argmax(1)
                gamma = np.array([z[i, y[i]] - np.delete(z[i], y[i]).max() for i in range(len(y))])
                for c, row in enumerate(got_rows):
                    k = int((pred[y == c] != c).sum())
                    assert row["errors"] == k and close(row["error"], k / row["n"])
                    assert close(row["margin_median"], np.median(gamma[y == c]))
            else:
                assert all(r["error"] is None and r["classifier_norm"] is None and r["margin_median"] is None for r in got_rows)
            want, _ = ref_geometry(h, y, K, W if layer == "penultimate" else np.ones((K, h.shape[1])), train_counts)
            got = rec.layers[layer]["metrics"][split]
            for key, value in want.items():
                if layer != "penultimate" and (key.endswith("_W") or key == "seli_distance_logits"):
                    assert key not in got  # classifier quantities live at the penultimate layer only
                    continue
                assert close(got[key], value), (layer, split, key, got[key], value)


def test_seli_distance_equals_the_etf_error_of_the_reference_for_balanced_counts():
    """Closed form behind the balanced test: S^{1/2} ∝ (S^{1/2})⁺ ∝ P when every n_c is equal."""
    rng = np.random.default_rng(1)
    W, M = rng.standard_normal((5, 7)), rng.standard_normal((5, 7))
    Mt = M - M.mean(0)
    seli = ref_seli(W, Mt, np.full(5, 30))
    assert close(seli["seli_distance_W"], etf_error(W @ W.T)) and close(seli["seli_distance_M"], etf_error(Mt @ Mt.T))
    assert close(seli["seli_distance_logits"], etf_error(W @ Mt.T))


# ------------------------------------------------------------------------------------------------
# the in-pass per-class terms against the stand-alone per-class replay
# ------------------------------------------------------------------------------------------------


def test_in_pass_terms_equal_the_stand_alone_replay_and_merge_by_shards():
    from ncbounds.stats.class_stats import ClassStats
    from ncbounds.stats.ncc import NCCCounter
    from ncbounds.stats.per_class import PerClassReplay, PerClassTerms
    from ncbounds.stats.projected import ProjectedStats

    h, y, _, _ = imbalanced_data((50, 25, 12, 6), d=9, seed=11)
    ht, yt = torch.as_tensor(h), torch.as_tensor(y)
    stats = ClassStats(4, 9, "none").update(ht, yt)
    ref_means = stats.means + 0.1  # NCC against other (reference) means, as on a test split
    whole = ProjectedStats(stats.means, stats.counts, per_class=True).update(ht, yt)
    counter = NCCCounter(ref_means).update(ht, yt)
    shards = [ProjectedStats(stats.means, stats.counts, per_class=True).update(ht[i : i + 30], yt[i : i + 30])
              for i in range(0, len(y), 30)]
    merged = shards[0]
    for other in shards[1:]:
        merged.merge(other)
    alone = PerClassReplay(stats.means, stats.counts, reference_means=ref_means).update(ht, yt)
    terms = PerClassTerms(whole, counter)
    assert torch.equal(terms.n, alone.n) and torch.equal(terms.ncc_errors, alone.ncc_errors)
    assert torch.allclose(terms.nc1_terms, alone.nc1_terms, rtol=1e-12, atol=0)
    assert torch.allclose(merged.class_terms, whole.class_terms, rtol=1e-12, atol=0)
    # no between-class rank (one class present): no terms, and shares are None
    one = ClassStats(4, 9, "none").update(ht[yt == 0], yt[yt == 0])
    assert ProjectedStats(one.means, one.counts, per_class=True).class_terms is None
