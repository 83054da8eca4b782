"""The optimised PAC-Bayes certificates end to end: the report's headline, the command-line options
(--prior, --prior-samples, --pb-steps, --pb-time), batch, and plot --kind pacbayes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers_cli import run_cli
from helpers_models import ARCH, one_torch_thread, trained_mlp

from ncbounds.bounds.base import REGISTRY
from ncbounds.bounds.headline import tightest_certificates
from ncbounds.bounds.runner import load_catalogue
from ncbounds.errors import DataError
from ncbounds.io.indices import read_indices
from ncbounds.models import build_model

#: Fast settings of the optimisation for tests (the engine itself is tested in test_pacbayes_opt.py).
FAST = ("--pb-steps", "20", "--bound-option", "pac-bayes-opt.mc_passes=1", "--bound-option", "pac-bayes-opt.log_every=5")


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_torch_thread():
        yield



@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Two digits checkpoints (different training lengths) with their initialization, as a training run saves them."""
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    torch.save(build_model(ARCH).state_dict(), folder / "init.pt")
    for steps in (40, 80):
        torch.save(trained_mlp(steps=steps).state_dict(), folder / f"step{steps}.pt")
    (folder / "ncbounds.json").write_text(json.dumps({"arch": ARCH, "data": "digits", "init_checkpoint": "init.pt"}))
    return folder


def _json_report(path, *args):
    code, out, err = run_cli("report", path, "--format", "json", *args)
    assert code == 0, err
    return json.loads(out)


# ------------------------------------------------------------------------------------------------
# the headline: the tightest certificate of each kind
# ------------------------------------------------------------------------------------------------

#: What each certificate of the catalogue certifies, written out here independently of the registry:
#: (predictor, labelled data). None: a certificate of another predictor, never in the headline.
KINDS = {
    "test_cp": ("network", "test"), "test_kl": ("network", "test"), "nc_split_certificate": ("network", "test"),
    "golowich2018": ("network", "training"), "pacbayes_opt_deterministic": ("network", "training"),
    "pacbayes_gauss": ("stochastic", "training"), "pacbayes_opt": ("stochastic", "training"),
    "nc_split_certificate_ncc": None, "test_kl_hamming": None, "fewshot_certificate": None, "fewshot_population_certificate": None,
}


def test_every_certificate_of_the_catalogue_says_what_it_certifies():
    certificates = {n: s for n, s in load_catalogue().items() if s.status == "certificate"}
    assert set(certificates) == set(KINDS), "a new certificate must declare certifies/evidence (and be listed here)"
    for name, spec in certificates.items():
        expected = KINDS[name]
        assert (spec.certifies, spec.evidence)[: 1 if expected is None else 2] == ((None,) if expected is None else expected), name


def _bound(name, value, status="certificate", delta=0.05):
    return {"name": name, "value": value, "status": status if value is not None else "not-applicable", "delta": delta}


def _brute_force(bounds, predictor, evidence):
    valid = [b for b in bounds if b["status"] == "certificate" and b["value"] is not None and KINDS.get(b["name"]) == (predictor, evidence)]
    return (min(valid, key=lambda b: b["value"]), valid) if valid else (None, [])


@pytest.mark.parametrize("seed", range(6))
def test_headline_is_the_minimum_over_valid_certificates_of_each_kind(seed):
    load_catalogue()
    rng = np.random.default_rng(seed)
    names = [n for n in KINDS] + ["bartlett2017", "neyshabur2018", "jiang_params", "nc_cantelli"]
    bounds = []
    for name in names:
        spec = REGISTRY[name]
        value = None if rng.random() < 0.2 else float(rng.choice([rng.uniform(0, 1), rng.uniform(1, 20), rng.uniform(0, 0.01)]))
        bounds.append(_bound(name, value, spec.status, float(rng.choice([0.05, 0.01]))))
    for head, (predictor, evidence) in zip(tightest_certificates(bounds),
                                           [("network", "training"), ("stochastic", "training"), ("network", "test")], strict=True):
        best, valid = _brute_force(bounds, predictor, evidence)
        if best is None:
            assert head.name is None and head.value is None and head.candidates == 0
            continue
        assert (head.name, head.value, head.delta) == (best["name"], best["value"], best["delta"])
        assert head.candidates == len(valid) and head.vacuous == (best["value"] >= 1)
        assert head.joint_confidence == pytest.approx(max(0.0, 1 - sum(b["delta"] for b in valid)))


def test_headline_ignores_predictors_plug_ins_and_other_predictors_certificates():
    bounds = [_bound("nc_split_certificate_ncc", 0.001), _bound("gaussian_ncc", 0.0001, "predictor"),
              _bound("nc_cantelli", 0.0002, "plug-in"), _bound("golowich2018", 3.5), _bound("test_kl", None)]
    network, stochastic, test = tightest_certificates(bounds)
    assert (network.name, network.value, network.vacuous, network.candidates) == ("golowich2018", 3.5, True, 1)
    assert stochastic.name is None and test.name is None


# ------------------------------------------------------------------------------------------------
# report, options, batch, plot
# ------------------------------------------------------------------------------------------------


def test_report_leads_with_what_can_be_certified(run_dir):
    code, out, err = run_cli("report", run_dir / "step80.pt", "--bounds", "default,certificates", *FAST)
    assert code == 0, err
    record = _json_report(run_dir / "step80.pt", "--bounds", "default,certificates", *FAST)
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("what can be certified"))
    assert start < next(i for i, line in enumerate(lines) if line.startswith("bounds, read against")), "the headline comes first"
    by_name = {b["name"]: b for b in record["bounds"]}
    for label, kind in (("deployed network, from training data", ("network", "training")),
                        ("stochastic network (Gibbs risk)", ("stochastic", "training")),
                        ("deployed network, from the labelled test set", ("network", "test"))):
        row = next(line for line in lines[start:] if line.startswith(label))
        valid = [b for b in by_name.values() if KINDS.get(b["name"]) == kind and b["value"] is not None]
        best = min(valid, key=lambda b: b["value"])
        assert best["name"] in row and f"{best['value']:.4f}" in row, (row, best)
        assert ("VACUOUS" in row) == (best["value"] >= 1)
        assert (f"smallest of {len(valid)}" in row) == (len(valid) > 1)
    assert by_name["pacbayes_opt"]["status"] == by_name["pacbayes_opt_deterministic"]["status"] == "certificate"
    assert by_name["pacbayes_opt"]["inputs"]["steps"] == 20
    assert "pacbayes_opt: ê = " in out and "pacbayes_opt_deterministic: Gibbs certificate" in out  # how δ is spent


def test_slow_certificates_are_out_of_the_default_set_and_in_certificates():
    from ncbounds.bounds.runner import select_bounds

    assert not {"pacbayes_opt", "pacbayes_opt_deterministic"} & set(select_bounds("default"))
    assert {"pacbayes_opt", "pacbayes_opt_deterministic"} <= set(select_bounds("certificates"))


def test_prior_learn_takes_its_settings_and_leaves_the_rest_for_the_certificate(run_dir):
    record = _json_report(run_dir / "step80.pt", "--bounds", "pacbayes_opt", "--prior", "learn:fraction=0.3,epochs=2,seed=5", *FAST)
    (bound,) = record["bounds"]
    n_train = record["data"]["splits"]["train"]["n"]
    prior = bound["inputs"]["prior"]
    assert prior["kind"] == "learn" and bound["inputs"]["config"]["prior_epochs"] == 2 and bound["inputs"]["config"]["prior_seed"] == 5
    assert prior["prior_samples"] == int(np.floor(0.3 * n_train)) and bound["inputs"]["n"] == n_train - prior["prior_samples"]


def test_prior_checkpoint_with_its_samples_is_a_given_prior(run_dir, tmp_path):
    indices = np.arange(0, 600, 2)
    (tmp_path / "seen.txt").write_text("# samples the prior saw\n" + "\n".join(map(str, indices)))
    record = _json_report(run_dir / "step80.pt", "--bounds", "pac-bayes-opt", "--prior", run_dir / "step40.pt",
                          "--prior-samples", tmp_path / "seen.txt", *FAST)
    by_name = {b["name"]: b for b in record["bounds"]}
    n_train = record["data"]["splits"]["train"]["n"]
    for bound in by_name.values():
        assert bound["status"] == "certificate", bound.get("reason")
        assert bound["inputs"]["prior"]["kind"] == "given" and bound["inputs"]["n"] == n_train - len(indices)
    import hashlib

    assert by_name["pacbayes_opt"]["inputs"]["prior"]["prior_indices_sha256"] == hashlib.sha256(indices.astype("<i8").tobytes()).hexdigest()
    assert by_name["pacbayes_opt_deterministic"]["inputs"]["unlabeled_inputs"] == record["data"]["splits"]["test"]["n"]


def _kl_inverse_upper(q, budget):
    """max{p ∈ [q, 1] : kl(q‖p) ≤ budget} by bisection (written here, independently of the library)."""
    def kl(a, b):
        out = 0.0 if a == 0 else a * np.log(a / b)
        return out + (0.0 if a == 1 else (1 - a) * np.log((1 - a) / (1 - b)))
    lo, hi = q, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kl(q, mid) <= budget else (lo, mid)
    return lo


def test_the_record_holds_what_reproduces_the_certificate(run_dir):
    record = _json_report(run_dir / "step40.pt", "--bounds", "pacbayes_opt", *FAST)
    (bound,) = record["bounds"]
    i, d = bound["inputs"], bound["details"]
    n, trials = i["n"], i["mc_samples"]
    assert trials == n * i["config"]["mc_passes"] and i["mc"]["mode"] == "per-example"
    assert i["gibbs_error"] == pytest.approx(i["mc"]["errors"] / trials, rel=1e-12)
    upper = _kl_inverse_upper(i["gibbs_error"], np.log(1 / i["delta_split"]["gibbs_mc"]) / trials)
    assert i["gibbs_error_upper"] == pytest.approx(upper, abs=1e-9)
    union = 2 * np.log(i["j"]) + np.log(np.pi ** 2 / 6)  # the countable λ grid's weights 6/(π² j²)
    assert i["prior_var"] == pytest.approx(10 * np.exp(-i["j"] / 100), rel=1e-12)
    budget = (i["kl"] + np.log(2 * np.sqrt(n) / i["delta_split"]["gibbs_pb"]) + union) / n
    assert bound["value"] == pytest.approx(_kl_inverse_upper(upper, budget), abs=1e-9)
    assert d["union_cost"] == pytest.approx(union, rel=1e-12)


@pytest.mark.parametrize("args, words", [
    (("--prior", "learn"), "does not select"),  # the default set has no optimised certificate
    (("--bounds", "pacbayes_opt", "--prior", "nosuchfile.pt"), "none of them"),
    (("--bounds", "pacbayes_opt", "--prior", "learn:width=3"), "learn takes fraction"),
    (("--bounds", "pacbayes_opt", "--prior-samples", "x.txt"), "goes with --prior CKPT"),
    (("--bounds", "pacbayes_opt", "--pb-steps", "5", "--bound-option", "pac-bayes-opt.steps=7"), "disagrees"),
    (("--bounds", "pacbayes_opt", "--bound-option", "pac-bayes-opt.sigma_init=wide"), "sigma_init"),
])
def test_option_mistakes_are_one_sentence_before_any_work(run_dir, args, words):
    code, out, err = run_cli("report", run_dir / "step80.pt", *args)
    lines = [line for line in err.strip().splitlines() if not line.startswith("note: ")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err
    assert out == ""


def test_prior_checkpoint_needs_its_samples(run_dir):
    code, _, err = run_cli("report", run_dir / "step80.pt", "--bounds", "pacbayes_opt", "--prior", run_dir / "step40.pt")
    assert code == 2 and "--prior-samples" in err


def test_sigma_init_accepts_a_number_or_a_relative_rule(run_dir):
    for value, expected in (("0.01", 0.01), ("relative:0.2", "relative:0.2")):
        record = _json_report(run_dir / "step40.pt", "--bounds", "pacbayes_opt", *FAST,
                              "--bound-option", f"pacbayes_opt.sigma_init={value}")
        assert record["bounds"][0]["inputs"]["config"]["sigma_init"] == expected


def test_batch_runs_the_certificates_in_workers_like_report(run_dir, tmp_path):
    out = tmp_path / "results"
    code, _, err = run_cli("batch", run_dir, "--out", out, "--jobs", "2", "--bounds", "pac-bayes-opt", *FAST)
    assert code == 0, err
    records = {json.loads(p.read_text())["checkpoint"]["path"].rsplit("/", 1)[-1]: json.loads(p.read_text())
               for p in out.glob("*.json")}
    assert set(records) >= {"step40.pt", "step80.pt"}
    single = _json_report(run_dir / "step40.pt", "--bounds", "pac-bayes-opt", *FAST)
    in_batch = {b["name"]: b["value"] for b in records["step40.pt"]["bounds"]}
    assert in_batch == {b["name"]: b["value"] for b in single["bounds"]}  # same seed, same numbers in a worker process
    code, _, err = run_cli("plot", out, "--kind", "pacbayes", "-o", tmp_path / "pb.png", "--checkpoint", "step80")
    assert code == 0 and "step80" in err, err
    assert (tmp_path / "pb.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = run_cli("plot", out, "--kind", "bounds", "-o", tmp_path / "bounds.png")
    assert code == 0, err


def test_plot_pacbayes_without_a_history_says_how_to_get_one(run_dir, tmp_path):
    out = tmp_path / "results"
    code, _, err = run_cli("batch", run_dir, "--out", out, "--bounds", "test_kl")
    assert code == 0, err
    code, _, err = run_cli("plot", out, "--kind", "pacbayes", "-o", tmp_path / "pb.png")
    assert code != 0 and "--bounds certificates" in err and not (tmp_path / "pb.png").exists()


def test_the_prior_files_are_part_of_a_records_identity(run_dir, tmp_path):
    from ncbounds.batch.identity import inputs_hash
    from ncbounds.options import EvalOptions

    seen = tmp_path / "seen.json"
    seen.write_text(json.dumps([1, 2, 3]))
    opts = EvalOptions(bounds="pacbayes_opt", prior=str(run_dir / "step40.pt"), prior_samples=str(seen))
    before = inputs_hash(run_dir / "step80.pt", opts)
    seen.write_text(json.dumps([1, 2, 4]))
    assert inputs_hash(run_dir / "step80.pt", opts) != before


# ------------------------------------------------------------------------------------------------
# index files
# ------------------------------------------------------------------------------------------------


def test_index_files_in_every_format(tmp_path):
    expected = (5, 0, 17, 3)
    np.save(tmp_path / "a.npy", np.array(expected, dtype=np.int32))
    (tmp_path / "b.json").write_text(json.dumps(list(expected)))
    (tmp_path / "c.json").write_text(json.dumps({"indices": list(expected)}))
    (tmp_path / "d.txt").write_text("5, 0\n17 # a comment\n\n3\n")
    for name in ("a.npy", "b.json", "c.json", "d.txt"):
        assert read_indices(tmp_path / name) == expected, name
    (tmp_path / "empty.txt").write_text("")
    assert read_indices(tmp_path / "empty.txt") == ()


@pytest.mark.parametrize("content, words", [
    ("1 2 2", "repeats"), ("1 -2", "negative"), ("1 2.5", "not an integer"), ('{"x": 1}', "JSON list"), ("[1, true]", "integer"),
])
def test_bad_index_files_are_one_sentence(tmp_path, content, words):
    path = tmp_path / ("f.json" if content.startswith(("{", "[")) else "f.txt")
    path.write_text(content)
    with pytest.raises(DataError, match=words):
        read_indices(path)


def test_pickled_npy_index_files_are_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="could not be read"):
        read_indices(tmp_path / "obj.npy")
