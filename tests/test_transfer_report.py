"""Ranking across a batch (correlate --against), NCTI per target group, the transfer table columns, and the
pure layer-sweep / tunnel / softmax / certificate helpers — against scipy, hand computations and brute force."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

from ncbounds.errors import UsageError
from ncbounds.report.results import records_to_frame
from ncbounds.report.transfer_columns import transfer_cells, transfer_long_rows
from ncbounds.report.transfer_ranking import lower_is_better, ranking_table, with_ncti
from ncbounds.transfer.bounds import independent_blocks, population_certificate
from ncbounds.transfer.layer import source_softmax, transfer_scores
from ncbounds.transfer.sweep import covariance_rank, layer_sweep, tunnel_summary

AGAINST = "transfer.penultimate.probe_error"


def _frame(target_of_row=None):
    rng = np.random.default_rng(0)
    n = 8
    df = pd.DataFrame({
        "checkpoint": [f"m{i}.pt" for i in range(n)],
        AGAINST: rng.uniform(0.05, 0.5, n),
        "transfer.penultimate.score.logme": rng.normal(size=n),
        "transfer.penultimate.score.leep": [None, *rng.normal(size=n - 1)],
        "transfer.penultimate.score.ncti_seli": rng.uniform(10, 20, n),
        "transfer.penultimate.score.ncti_ncc": rng.uniform(0.5, 1, n),
        "transfer.penultimate.score.ncti_vc": rng.uniform(1, 3, n),
    })
    if target_of_row is not None:
        df["transfer.target"] = target_of_row
    return df


def test_one_target_equals_scipy():
    df = _frame()
    table = ranking_table(df, AGAINST).set_index("measure")
    s, t = df["transfer.penultimate.score.logme"].to_numpy(), -df[AGAINST].to_numpy()  # errors: lower is better
    row = table.loc["transfer.penultimate.score.logme"]
    assert row["kendall_tau"] == pytest.approx(stats.kendalltau(s, t).statistic, abs=1e-15)
    assert row["weighted_tau"] == pytest.approx(stats.weightedtau(s, t).statistic, abs=1e-15)
    assert row["pearson_r"] == pytest.approx(stats.pearsonr(s, t).statistic, abs=1e-15)
    best = np.argmax(t)
    assert row["top1_hit"] == float(np.argmax(s) == best)
    assert row["top3_hit"] == float(best in np.argsort(-s)[:3])
    leep = table.loc["transfer.penultimate.score.leep"]
    keep = ~df["transfer.penultimate.score.leep"].isna().to_numpy()
    assert leep["n"] == 7 and leep["kendall_tau"] == pytest.approx(
        stats.kendalltau(df["transfer.penultimate.score.leep"].to_numpy(dtype=float)[keep], t[keep]).statistic, abs=1e-15)
    assert "transfer.penultimate.score.ncti_seli" not in table.index and "transfer.penultimate.score.ncti" in table.index
    assert table.attrs["against_lower_is_better"] is True


def test_ncti_is_normalized_within_each_target_on_a_hand_made_batch():
    df = pd.DataFrame({
        "transfer.target": ["a", "a", "a", "b", "b"],
        "transfer.penultimate.score.ncti_seli": [10.0, 20.0, 15.0, 1.0, 3.0],
        "transfer.penultimate.score.ncti_ncc": [0.5, 0.9, 0.7, 0.2, 0.2],
        "transfer.penultimate.score.ncti_vc": [2.0, 1.0, 4.0, 5.0, 6.0],
    })
    out = with_ncti(df)["transfer.penultimate.score.ncti"].tolist()
    # group a: seli' = 0, 1, .5; ncc' = 0, 1, .5; vc' = 1/3, 0, 1  →  ncc' + seli' − vc'
    assert out[:3] == pytest.approx([0 + 0 - 1 / 3, 1 + 1 - 0, 0.5 + 0.5 - 1])
    # group b: seli' = 0, 1; ncc constant → 0 for both; vc' = 0, 1
    assert out[3:] == pytest.approx([0.0, 0.0])


def test_groups_average_the_statistics_and_hits_become_rates():
    df = _frame(["t1"] * 4 + ["t2"] * 4)
    row = ranking_table(df, AGAINST, measures="transfer.penultimate.score.logme").iloc[0]
    taus, hits = [], []
    for g in (slice(0, 4), slice(4, 8)):
        s, t = df["transfer.penultimate.score.logme"].to_numpy()[g], -df[AGAINST].to_numpy()[g]
        taus.append(stats.weightedtau(s, t).statistic)
        hits.append(float(np.argmax(s) == np.argmax(t)))
    assert row["groups"] == 2 and row["n"] == 8
    assert row["weighted_tau"] == pytest.approx(np.mean(taus), abs=1e-15)
    assert row["top1_hit"] == pytest.approx(np.mean(hits))


def test_orientation_and_bad_columns():
    assert lower_is_better("transfer.penultimate.probe_error") and lower_is_better("transfer.bound.fewshot_certificate")
    assert not lower_is_better("transfer.penultimate.score.nce") and not lower_is_better("hp.width")
    df = _frame()
    flipped = ranking_table(df, AGAINST, measures="transfer.penultimate.score.logme", against_lower_is_better=False).iloc[0]
    normal = ranking_table(df, AGAINST, measures="transfer.penultimate.score.logme").iloc[0]
    assert flipped["kendall_tau"] == pytest.approx(-normal["kendall_tau"])
    with pytest.raises(UsageError, match="did you mean"):
        ranking_table(df, "transfer.penultimate.probe_eror")
    with pytest.raises(UsageError, match="no transferability scores"):
        ranking_table(df[["checkpoint", AGAINST]], AGAINST)


def _record():
    fewshot = [{"ways": 5, "shots": 1, "queries": 15, "episodes": 600, "error": 0.3, "ci95": [0.29, 0.31], "certificate": 0.33,
                "ci95_halfwidth": 0.01}]
    layer = {"dim": 4, "index": 1, "metrics": {"train": {"nc1": 0.5}, "test": {"nc1": 0.6}},
             "ncc_error": {"error": 0.2, "ci95": [0.1, 0.3]}, "probe_error": {"error": 0.1, "ci95": [0.05, 0.2]},
             "fewshot": fewshot, "scores": {"logme": -0.1, "leep": None}, "covariance_rank": 3}
    return {"checkpoint": {"path": "/r/m.pt"}, "errors": {}, "layers": {"penultimate": {"metrics": {}}},
            "transfer": {"target": {"data": "digits:classes=5-9", "num_classes": 5, "n_train": 10, "n_test": 5},
                         "layers": {"features.1": layer, "penultimate": layer},
                         "layer_sweep": {"ncc_error": {"layer": "features.1", "error": 0.2},
                                         "fewshot": {"5way1shot": {"layer": "features.1"}}},
                         "tunnel": {"penultimate_to_best_probe_accuracy": 1.0},
                         "bounds": [{"name": "fewshot_certificate", "value": 0.33, "status": "certificate"}]}}


def test_wide_and_long_columns_of_a_hand_made_record():
    numbers, text = transfer_cells(_record())
    assert numbers["transfer.features.1.probe_error"] == 0.1 and numbers["transfer.features.1.probe_error.hi"] == 0.2
    assert numbers["transfer.penultimate.fewshot.5way1shot.lo"] == 0.29
    assert numbers["transfer.penultimate.fewshot.5way1shot.certificate"] == 0.33
    assert numbers["transfer.penultimate.score.leep"] is None and numbers["transfer.penultimate.test.nc1"] == 0.6
    assert "transfer.features.1.test.nc1" not in numbers  # target metrics: penultimate only in the wide table
    assert text["transfer.target"] == "digits:classes=5-9" and text["transfer.best_layer.5way1shot"] == "features.1"
    assert text["transfer.bound.fewshot_certificate.status"] == "certificate"
    df = records_to_frame([_record()])
    cols = list(df.columns)
    assert cols.index("transfer.target") < cols.index("transfer.features.1.ncc_error") < cols.index("transfer.best_layer.ncc_error")
    assert df["transfer.penultimate.score.leep"].isna().all() and df["transfer.n_train"].iloc[0] == 10
    rows = transfer_long_rows(_record())
    assert ("features.1", "test", "transfer.nc1", 0.6, None) in rows
    assert ("penultimate", "train", "transfer.score.logme", -0.1, None) in rows
    assert ("penultimate", "test", "transfer.fewshot.5way1shot", 0.3, None) in rows
    assert ("-", "-", "transfer.bound.fewshot_certificate", 0.33, "certificate") in rows
    assert transfer_cells({"errors": {}, "layers": {}}) == ({}, {}) and transfer_long_rows({}) == []


def test_layer_sweep_and_tunnel_on_hand_made_results():
    layers = {"a": {"ncc_error": {"error": 0.3}, "probe_error": {"error": 0.1}, "fewshot": [{"ways": 5, "shots": 1, "error": 0.4}]},
              "b": {"ncc_error": {"error": 0.2}, "probe_error": {"error": 0.1}, "fewshot": [{"ways": 5, "shots": 1, "error": None}]},
              "penultimate": {"ncc_error": {"error": 0.2}, "probe_error": {"error": 0.2}, "fewshot": []}}
    sweep = layer_sweep(layers)
    assert sweep["ncc_error"] == {"layer": "b", "error": 0.2}  # ties → earlier layer
    assert sweep["probe_error"] == {"layer": "a", "error": 0.1}
    assert sweep["fewshot"] == {"5way1shot": {"layer": "a", "error": 0.4}}
    tunnel = tunnel_summary({"a": 3, "b": 2, "penultimate": 1}, {n: r["probe_error"]["error"] for n, r in layers.items()}, "penultimate")
    assert tunnel["best_probe_layer"] == "a" and tunnel["penultimate_to_best_probe_accuracy"] == pytest.approx(0.8 / 0.9)


def test_covariance_rank_softmax_and_score_notes():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 3)) @ rng.normal(size=(3, 6)) + 5.0  # rank-3 covariance in 6 dimensions, offset
    assert covariance_rank(x) == 3 == np.linalg.matrix_rank(np.cov(x, rowvar=False))
    assert covariance_rank(rng.normal(size=(4, 10))) == 3 and covariance_rank(np.ones((5, 2))) == 0
    W, b, h = rng.normal(size=(4, 6)), rng.normal(size=4), rng.normal(size=(7, 6)) * 30
    np.testing.assert_allclose(source_softmax(h, W, b), special.softmax(h @ W.T + b, axis=1), rtol=1e-12, atol=1e-300)
    with pytest.raises(UsageError):
        source_softmax(h, W[:, :5])
    y = np.repeat(np.arange(3), 10)
    scores, notes = transfer_scores(rng.normal(size=(30, 20)), y, max_dim=10)
    assert scores["logme"] is None and "skipped" in notes["logme"] and scores["leep"] is None and scores["gbc_diagonal"] is not None


def test_population_certificate_formula_and_validity():
    assert independent_blocks([40, 35, 61], 5, 15) == 1 and independent_blocks([19, 50], 5, 15) == 0
    out = population_certificate(0.2, 600, [100, 100], 5, 15, 0.05)
    assert out["blocks"] == 5 and out["value"] > out["episode_bound"] > 0.2
    assert population_certificate(0.2, 600, [10, 100], 5, 15, 0.05)["value"] is None
    # validity on Bernoulli "episodes": a pool of n_c samples per class whose per-episode error is the mean of the
    # queries' independent Bernoulli(μ) outcomes — the certificate covers μ in ≥ 95% of 400 pools
    # (the episode step alone, which certifies only the pool's own mean, does not: it needs the block step)
    rng = np.random.default_rng(2)
    mu, hits, inner_hits, pools = 0.3, 0, 0, 200
    for _ in range(pools):
        pool = rng.random((2, 40)) < mu  # two classes, 40 samples each: 2 blocks of shots 5 + queries 15
        idx = np.argsort(rng.random((600, 2, 40)), axis=2)[:, :, 5:20]
        errors = np.take_along_axis(np.broadcast_to(pool, (600, 2, 40)), idx, axis=2).mean(axis=(1, 2))
        res = population_certificate(float(errors.mean()), 600, [40, 40], 5, 15, 0.05)
        hits += res["value"] >= mu
        inner_hits += res["episode_bound"] >= mu
    assert hits >= 0.95 * pools and inner_hits < 0.9 * pools, (hits, inner_hits)
    assert math.isfinite(out["value"])
