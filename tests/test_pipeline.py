"""End-to-end tests of ncbounds.evaluate (DESIGN §3 inputs, §4 streaming statistics, §9 reliability).

A tiny MLP (digits, width 32) is trained for a few SGD steps, saved in every supported checkpoint
layout, and evaluated; the streamed statistics are checked against a direct whole-array computation,
sharded statistics against one pass, and the degenerate inputs of DESIGN §9 (K = 2, d < K, absent and
one-sample classes, a module left in train mode) against finite metrics and one-sentence notes.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from helpers_models import (
    ARCH,
    DATA,
    digits_split,
    eval_copy,
    one_torch_thread,
    prefixed,
    save_as_if_on_gpu,
    trained_bn_drop_net,
    trained_mlp,
    write_npz,
)

import ncbounds
from ncbounds.errors import UsageError
from ncbounds.features import PENULTIMATE, FeatureExtractor
from ncbounds.io.datasets import Split, iterate_batches, load_data
from ncbounds.metrics.functional import metrics_from_features
from ncbounds.pipeline import run_evaluation
from ncbounds.stats import ClassStats

try:  # brute-force, store-everything float64 twin of every metric (tests/reference_collapse.py)
    from tests.reference_collapse import reference_metrics
except ImportError:  # pragma: no cover - tests/ itself is on sys.path
    from reference_collapse import reference_metrics

MARGIN_KEYS = ("margin_min", "margin_p5", "margin_p10", "margin_median")


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_torch_thread():
        yield


def evaluate(path, **kw):
    kw.setdefault("data", DATA)
    kw.setdefault("layers", "all")
    kw.setdefault("device", "cpu")
    return ncbounds.evaluate(str(path) if path is not None else None, **kw)


def close(a, b, rel: float, abs_: float = 1e-12) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


def assert_metrics_close(got: dict, want: dict, keys, rel: float, where: str) -> None:
    bad = {k: (got.get(k), want.get(k)) for k in keys if not close(got.get(k), want.get(k), rel)}
    assert not bad, f"{where}: streamed vs direct differ: {bad}"


def assert_all_finite(record, allow_none=()) -> None:
    for layer, entry in record.layers.items():
        for split, metrics in entry["metrics"].items():
            for key, value in metrics.items():
                if key in allow_none and value is None:
                    continue
                assert value is not None and math.isfinite(value), f"{layer}/{split}/{key} = {value!r}"


#: mean cosine inside a block of classes: undefined (None) when the minority or majority block holds fewer
#: than two classes, as with K = 2 or a single minority class
WITHIN_BLOCK_COSINES = ("minority_cos_W", "majority_cos_W", "minority_cos_M", "majority_cos_M")

ONE_SENTENCE = re.compile(r"^[^\n]+[.)]$")


def assert_one_sentence(note: str) -> None:
    assert ONE_SENTENCE.match(note), note
    assert not re.search(r"[.!?] [A-Z]", note), f"more than one sentence: {note}"


# ---------------------------------------------------------------------------------------------
# the same weights through every checkpoint format


@pytest.fixture(scope="module")
def model():
    return trained_mlp()


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("formats")


@pytest.fixture(scope="module")
def reference(model, ckpt_dir):
    path = ckpt_dir / "reference.pt"
    torch.save(model.state_dict(), path)
    record = evaluate(path, arch=ARCH)
    assert record.test_error is not None and record.test_error < 0.5, "the model should be trained"
    return record


def _save_safetensors(model, path):
    st = pytest.importorskip("safetensors.torch")
    st.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def _save_script(model, path):
    torch.jit.save(torch.jit.script(eval_copy(model)), str(path))


def _save_lightning(model, path):
    torch.save({"state_dict": prefixed(model.state_dict(), "model."), "pytorch-lightning_version": "2.0", "global_step": 3}, path)


def _saver(wrap):
    return lambda model, path: torch.save(wrap(model), path)


# name -> (file name, writer(model, path), needs arch, needs trust, expected format, prefixes stripped)
FORMATS = {
    "plain": ("plain.pt", _saver(lambda m: m.state_dict()), True, False, "state_dict", []),
    "wrap-state_dict": ("w1.pt", _saver(lambda m: {"state_dict": m.state_dict(), "epoch": 3}), True, False, "wrapped", []),
    "wrap-model": ("w2.pth", _saver(lambda m: {"model": m.state_dict(), "epoch": 3}), True, False, "wrapped", []),
    "wrap-model_state_dict": ("w3.pt", _saver(lambda m: {"model_state_dict": m.state_dict(), "optimizer_state_dict": {}}),
                              True, False, "wrapped", []),
    "wrap-net": ("w4.tar", _saver(lambda m: {"net": m.state_dict(), "acc": 0.9}), True, False, "wrapped", []),
    "lightning": ("epoch=3-step=3.ckpt", _save_lightning, True, False, "lightning", ["model."]),
    "dataparallel": ("ddp.pt", _saver(lambda m: prefixed(m.state_dict(), "module.")), True, False, "state_dict", ["module."]),
    "compile": ("compiled.pt", _saver(lambda m: prefixed(m.state_dict(), "_orig_mod.")), True, False, "state_dict", ["_orig_mod."]),
    "safetensors": ("w.safetensors", _save_safetensors, True, False, "safetensors", []),
    "torchscript+arch": ("scripted.pt", _save_script, True, False, "torchscript", []),
    "pickled-module": ("whole.pt", _saver(lambda m: m), False, True, "pickled-module", []),
    "gpu-tagged": ("gpu.pt", lambda m, p: save_as_if_on_gpu({"model": m.state_dict(), "epoch": 1}, p), True, False, "wrapped", []),
    "gpu-tagged-module": ("gpu_whole.pt", lambda m, p: save_as_if_on_gpu(m, p), False, True, "pickled-module", []),
}


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_gives_the_same_report(name, model, ckpt_dir, reference):
    filename, write, needs_arch, trust, fmt, prefixes = FORMATS[name]
    path = ckpt_dir / filename
    write(model, path)
    record = evaluate(path, arch=ARCH if needs_arch else None, trust_checkpoint=trust)
    got, want = record.to_dict(), reference.to_dict()
    assert got["checkpoint"]["format"] == fmt
    assert got["checkpoint"]["prefixes_stripped"] == prefixes
    if name.startswith("gpu-tagged"):
        assert got["checkpoint"]["saved_devices"] == ["cuda:0"]
        assert record.provenance["device"] == "cpu"
    assert got["errors"] == want["errors"]
    assert got["layers"][PENULTIMATE] == want["layers"][PENULTIMATE]
    assert got["layers"] == want["layers"]
    assert got["layerwise"] == want["layerwise"]
    assert got["bounds"] == want["bounds"]
    assert got["model"]["num_params"] == want["model"]["num_params"]
    assert got["notes"] == want["notes"]


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_without_arch_asks_for_it(model, ckpt_dir):
    """Scripted submodules cannot be hooked, so a TorchScript archive needs --arch (one clear sentence)."""
    path = ckpt_dir / "scripted_noarch.pt"
    _save_script(model, path)
    with pytest.raises(UsageError, match="TorchScript.*--arch"):
        evaluate(path, data="digits", device="cpu", bounds="none")


# ---------------------------------------------------------------------------------------------
# streamed statistics equal a direct whole-array computation


def _direct(model, x):
    """Penultimate features (input of fc), first ReLU output and logits of the whole array, float32."""
    got = {}
    handles = [
        model.fc.register_forward_pre_hook(lambda _m, inp: got.__setitem__("pen", inp[0].detach().clone())),
        model.features[1].register_forward_hook(lambda _m, _i, out: got.__setitem__("relu1", out.detach().clone())),
    ]
    try:
        with torch.no_grad():
            logits = model(torch.as_tensor(x))
    finally:
        for h in handles:
            h.remove()
    return got["pen"].double().numpy(), got["relu1"].double().numpy(), logits.double().numpy()


def _margins(z, y):
    true = z[np.arange(len(y)), y]
    others = z.copy()
    others[np.arange(len(y)), y] = -np.inf
    return true - others.max(1)


def _class_means(h, y, K):
    return np.stack([h[y == c].mean(0) for c in range(K)])


def test_streamed_equals_direct(model, ckpt_dir):
    path = ckpt_dir / "direct.pt"
    torch.save(model.state_dict(), path)
    record = evaluate(path, arch=ARCH, batch_size=37)
    xtr, ytr, xte, yte = digits_split()
    K = 10
    assert len(xtr) > 5 * 37  # several batches, including a ragged last one
    assert len(xtr) % 37 and len(xte) % 37

    # the float32 forward of this tiny MLP is batch-invariant on CPU (checked here); if a BLAS
    # made it depend on the batch size, only float32 agreement could be asked of the features
    with torch.no_grad():
        full = model(torch.as_tensor(xtr))
        parts = torch.cat([model(torch.as_tensor(xtr[i : i + 37])) for i in range(0, len(xtr), 37)])
    rel = 1e-9 if torch.equal(full, parts) else 1e-4

    W = model.fc.weight.detach().double().numpy()
    b = model.fc.bias.detach().double().numpy()
    h_tr, r_tr, z_tr = _direct(model, xtr)
    h_te, r_te, z_te = _direct(model, xte)
    means_tr = _class_means(h_tr, ytr, K)

    # 0-1 errors and margins from the network's own logits
    for split, z, y in (("train", z_tr, ytr), ("test", z_te, yte)):
        errors = int((z.argmax(1) != y).sum())
        assert record.errors[split]["errors"] == errors
        assert record.errors[split]["n"] == len(y)
        assert record.errors[split]["error"] == errors / len(y)
        m = _margins(z, y)
        want = {"margin_min": m.min(), **dict(zip(MARGIN_KEYS[1:], np.percentile(m, [5, 10, 50]), strict=True))}
        assert_metrics_close(record.penultimate[split], want, MARGIN_KEYS, rel, f"margins/{split}")

    # NC4: network decision vs nearest training class mean
    for split, h, z in (("train", h_tr, z_tr), ("test", h_te, z_te)):
        ncc = ((h[:, None, :] - means_tr[None]) ** 2).sum(-1).argmin(1)
        assert record.penultimate[split]["nc4_mismatch"] == pytest.approx((ncc != z.argmax(1)).mean(), abs=1e-15)

    # collapse metrics and NCC error at the penultimate layer and at the first hooked layer
    collapse_keys = None
    for layer, (htr, hte) in {PENULTIMATE: (h_tr, h_te), "features.1": (r_tr, r_te)}.items():
        head = dict(W=W, b=b) if layer == PENULTIMATE else {}
        train_means = _class_means(htr, ytr, K)
        want_tr = metrics_from_features(htr, ytr, num_classes=K, **head)
        want_te = metrics_from_features(hte, yte, num_classes=K, train_means=train_means, **head)
        got = record.layers[layer]["metrics"]
        assert record.layers[layer]["dim"] == htr.shape[1]
        collapse_keys = [k for k in want_tr if k not in MARGIN_KEYS and k != "nc4_mismatch"]
        assert "nc1" in collapse_keys and "ncc_error" in collapse_keys and "directional_cdnv" in collapse_keys
        assert_metrics_close(got["train"], want_tr, collapse_keys, rel, f"{layer}/train")
        assert_metrics_close(got["test"], want_te, collapse_keys, rel, f"{layer}/test")
        # and an independent brute-force computation (explicit pseudo-inverses, all features in memory)
        ref_tr = reference_metrics(htr, ytr, K, **head)
        ref_te = reference_metrics(hte, yte, K, train_means=train_means, **head)
        assert_metrics_close(got["train"], ref_tr, collapse_keys, max(rel, 1e-9), f"{layer}/train vs reference")
        assert_metrics_close(got["test"], ref_te, collapse_keys, max(rel, 1e-9), f"{layer}/test vs reference")
    assert record.data["splits"] == {"train": {"n": len(ytr)}, "test": {"n": len(yte)}}


def test_batch_size_does_not_change_the_report(model, ckpt_dir, reference):
    path = ckpt_dir / "batches.pt"
    torch.save(model.state_dict(), path)
    small = evaluate(path, arch=ARCH, batch_size=37).to_dict()
    assert small["errors"] == reference.to_dict()["errors"]
    for layer, entry in reference.layers.items():
        for split, want in entry["metrics"].items():
            assert_metrics_close(small["layers"][layer]["metrics"][split], want, want.keys(), 1e-9, f"{layer}/{split}")


# ---------------------------------------------------------------------------------------------
# precomputed Gaussian-ETF features: no checkpoint, closed forms


def test_gaussian_etf_features_without_checkpoint():
    spec = "gaussian-etf-features:K=5,d=16,n=400,sigma=0.05"
    record = evaluate(None, data=spec, layers=None)
    population = load_data(spec).info["population"]
    assert record.checkpoint is None
    assert record.data["splits"] == {"train": {"n": 2000}, "test": {"n": 2000}}
    test = record.errors["test"]
    assert test is not None and test["n"] == 2000
    assert 0.0 <= test["error"] <= 0.01  # sigma=0.05 around ETF means of norm 1: separable
    lo, hi = test["ci95"]
    assert lo <= test["error"] <= hi
    for split in ("train", "test"):
        got = record.penultimate[split]
        for key, pop_key in (("nc1", "nc1"), ("cdnv", "cdnv"), ("directional_cdnv", "directional_cdnv"),
                             ("separation_fuzziness", "he_su_d")):
            assert got[key] == pytest.approx(population[pop_key], rel=0.10), (split, key)
        # the exact ETF classifier W = the class means
        assert got["nc3_papyan"] < 0.05 and got["nc2_etf_error_means"] < 0.05
        assert got["nc4_mismatch"] == 0.0


# ---------------------------------------------------------------------------------------------
# sharded statistics merge to one pass


def _pipeline_batches(model, split: Split, batch_size: int = 37):
    with FeatureExtractor(model, ["features.1"]) as ex, torch.inference_mode():
        for xb, yb in iterate_batches(split, batch_size):
            feats, _ = ex.run(xb)
            yield {k: v.clone() for k, v in feats.items()}, yb.clone()


def _assert_stats_equal(got: ClassStats, want: ClassStats, rel: float = 1e-12) -> None:
    assert torch.equal(got.counts, want.counts)
    for key in ("means", "sq_dev", "scatter"):
        a, b = getattr(got, key).numpy(), getattr(want, key).numpy()
        assert a.shape == b.shape, key
        scale = np.abs(b).max() if b.size else 0.0
        np.testing.assert_allclose(a, b, rtol=rel, atol=rel * scale, err_msg=key)


@pytest.mark.parametrize("scatter_mode", ["per-class", "pooled"])
def test_sharded_statistics_merge_to_one_pass(model, scatter_mode):
    xtr, ytr, _, _ = digits_split()
    split = Split(xtr.copy(), ytr.copy())
    batches = list(_pipeline_batches(model, split))
    assert len(batches) >= 30
    K = 10
    for layer in (PENULTIMATE, "features.1"):
        d = batches[0][0][layer].shape[1]
        one = ClassStats(K, d, scatter_mode, name=layer)
        for feats, y in batches:
            one.update(feats[layer], y)
        assert one.total == len(ytr)

        # contiguous shards of batches (multi-worker), merged in order and in reverse order
        shards = []
        for part in (batches[:7], batches[7:20], batches[20:]):
            s = ClassStats(K, d, scatter_mode, name=layer)
            for feats, y in part:
                s.update(feats[layer], y)
            shards.append(s)
        merged = ClassStats(K, d, scatter_mode, name=layer)
        for s in shards:
            merged.merge(s)
        _assert_stats_equal(merged, one)
        reverse = ClassStats(K, d, scatter_mode, name=layer)
        for s in reversed(shards):
            reverse.merge(s)
        _assert_stats_equal(reverse, one)

        # shards that each miss whole classes (split by label), shipped through state()/from_state()
        h = torch.cat([f[layer] for f, _ in batches])
        y = torch.cat([yb for _, yb in batches])
        low, high = ClassStats(K, d, scatter_mode, name=layer), ClassStats(K, d, scatter_mode, name=layer)
        low.update(h[y < 4], y[y < 4])
        high.update(h[y >= 4], y[y >= 4])
        by_class = ClassStats.from_state(high.state()).merge(ClassStats.from_state(low.state()))
        _assert_stats_equal(by_class, one)


def test_pipeline_statistics_equal_one_pass(model, ckpt_dir):
    """The statistics the pipeline keeps (run_evaluation(...).splits) equal a one-pass ClassStats of the same batches."""
    path = ckpt_dir / "context.pt"
    torch.save(model.state_dict(), path)
    run = run_evaluation(str(path), arch=ARCH, batch_size=37, data=DATA, layers="all", device="cpu")
    xtr, ytr, _, _ = digits_split()
    batches = list(_pipeline_batches(model, Split(xtr.copy(), ytr.copy())))
    for layer in (PENULTIMATE, "features.1"):
        kept = run.splits["train"].layers[layer]
        one = ClassStats(10, kept.dim, "per-class", name=layer)
        for feats, y in batches:
            one.update(feats[layer], y)
        assert torch.equal(kept.counts, one.counts)
        np.testing.assert_allclose(kept.means.numpy(), one.means.numpy(), rtol=1e-12, atol=1e-12 * one.means.abs().max().item())
        np.testing.assert_allclose(kept.sq_dev.numpy(), one.sq_dev.numpy(), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# degenerate inputs (DESIGN §9)


def test_module_left_in_train_mode_is_switched_to_eval(tmp_path):
    net = trained_bn_drop_net()
    assert net.training and net.bn.running_mean.abs().sum() > 0
    train_path, eval_path = tmp_path / "train_mode.pt", tmp_path / "eval_mode.pt"
    torch.save(net, train_path)
    torch.save(eval_copy(net), eval_path)
    rec_train = evaluate(train_path, trust_checkpoint=True)
    rec_eval = evaluate(eval_path, trust_checkpoint=True)
    notes = [n for n in rec_train.notes if "eval mode" in n]
    assert len(notes) == 1 and "train mode" in notes[0]
    assert_one_sentence(notes[0])
    assert not any("eval mode" in n for n in rec_eval.notes)
    a, b = rec_train.to_dict(), rec_eval.to_dict()
    assert a["errors"] == b["errors"]
    assert a["layers"] == b["layers"]
    # and the numbers are those of the eval-mode network (BatchNorm running statistics, no dropout)
    _, _, xte, yte = digits_split()
    with torch.no_grad():
        z = eval_copy(net)(torch.as_tensor(xte))
    assert rec_train.errors["test"]["errors"] == int((z.argmax(1).numpy() != yte).sum())


def test_two_classes(tmp_path):
    xtr, ytr, xte, yte = digits_split()
    arch = "mlp:input_dim=64,num_classes=2,width=32,depth=2"
    model = trained_mlp(arch, steps=10, x=xtr[ytr < 2], y=ytr[ytr < 2])
    torch.save(model.state_dict(), tmp_path / "k2.pt")
    data = write_npz(tmp_path / "k2.npz", xtr[ytr < 2], ytr[ytr < 2], xte[yte < 2], yte[yte < 2])
    record = evaluate(tmp_path / "k2.pt", arch=arch, data=f"npz:{data}")
    assert record.model["num_classes"] == 2 and record.data["num_classes"] == 2
    assert_all_finite(record, allow_none=WITHIN_BLOCK_COSINES)
    pen = record.penultimate["train"]
    # two centered class means are antipodal: a perfect 2-point ETF
    assert pen["nc2_equiangular_means"] == pytest.approx(0.0, abs=1e-12)
    assert pen["nc2_etf_error_means"] == pytest.approx(0.0, abs=1e-12)
    assert pen["nc1"] > 0


def test_feature_dimension_below_number_of_classes(tmp_path):
    arch = "mlp:input_dim=64,num_classes=10,width=3,depth=2"
    model = trained_mlp(arch)
    torch.save(model.state_dict(), tmp_path / "narrow.pt")
    record = evaluate(tmp_path / "narrow.pt", arch=arch)
    assert record.layers[PENULTIMATE]["dim"] == 3
    assert_all_finite(record)
    assert record.penultimate["train"]["nc1"] > 0
    for note in record.notes:
        assert_one_sentence(note)


def test_absent_class_and_single_sample_class(tmp_path, model):
    xtr, ytr, xte, yte = digits_split()
    keep_tr = (ytr != 3) | (np.cumsum(ytr == 3) == 1)  # class 3: one training sample
    keep_te = (yte != 7) & ((yte != 5) | (np.cumsum(yte == 5) == 1))  # class 7 absent, class 5: one test sample
    data = write_npz(tmp_path / "gaps.npz", xtr[keep_tr], ytr[keep_tr], xte[keep_te], yte[keep_te])
    torch.save(model.state_dict(), tmp_path / "m.pt")
    record = evaluate(tmp_path / "m.pt", arch=ARCH, data=f"npz:{data}")
    notes = record.notes
    for note in notes:
        assert_one_sentence(note)
    absent = [n for n in notes if "test" in n and re.search(r"\b7\b", n) and "no samples" in n]
    single_train = [n for n in notes if "train" in n and re.search(r"\b3\b", n) and "single" in n]
    single_test = [n for n in notes if "test" in n and re.search(r"\b5\b", n) and "single" in n]
    assert absent and single_train and single_test, notes
    assert record.errors["test"]["n"] == int(keep_te.sum())
    assert_all_finite(record, allow_none=WITHIN_BLOCK_COSINES)  # class 3 (one sample) is the only minority class
