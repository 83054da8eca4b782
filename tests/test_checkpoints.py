"""Tests for ncbounds.io.checkpoints: every supported layout round-trips bit-identically."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
import zipfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ncbounds.errors import CheckpointError
from ncbounds.io.checkpoints import (
    LoadedCheckpoint,
    describe,
    guess_classifier_head,
    load_checkpoint,
    load_into_model,
    strip_prefixes,
)

# ---------------------------------------------------------------------------------------------
# a small model and helpers


class Net(nn.Module):
    """Conv -> BatchNorm -> pooled Linear head with ``num_classes`` outputs."""

    def __init__(self, num_classes: int = 3, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 2).flatten(1))


def make_net(seed: int, **kwargs) -> Net:
    torch.manual_seed(seed)
    net = Net(**kwargs)
    with torch.no_grad():  # non-trivial BatchNorm buffers so they are really compared
        net.bn.running_mean.normal_()
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.num_batches_tracked.fill_(7)
    return net.eval()


X = torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(123))


@pytest.fixture()
def ref() -> Net:
    return make_net(0)


def assert_same(model: nn.Module, ref: nn.Module) -> None:
    got, want = model.state_dict(), ref.state_dict()
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert torch.equal(got[k], want[k]), k
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(X), ref(X))


def roundtrip(path, ref: nn.Module, trust: bool = False) -> tuple[LoadedCheckpoint, list[str]]:
    ckpt = load_checkpoint(path, trust=trust)
    fresh = make_net(1)
    assert not torch.equal(fresh.fc.weight, ref.fc.weight)
    removed = load_into_model(fresh, ckpt)
    assert_same(fresh, ref)
    for t in ckpt.state_dict.values():
        assert t.device.type == "cpu"
    return ckpt, removed


def prefixed(sd: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in sd.items()}


def assert_one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


# ---------------------------------------------------------------------------------------------
# formats


def test_plain_state_dict(tmp_path, ref):
    p = tmp_path / "plain.pt"
    torch.save(ref.state_dict(), p)
    ckpt, removed = roundtrip(p, ref)
    assert ckpt.format == "state_dict" and ckpt.wrapper_key is None and removed == []
    assert ckpt.top_level_keys == list(ref.state_dict())
    assert ckpt.saved_devices == ["cpu"] and ckpt.unsafe_types == [] and ckpt.module is None
    assert ckpt.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    assert ckpt.path == str(p)


def test_legacy_serialization(tmp_path, ref):
    p = tmp_path / "legacy.pt"
    torch.save(ref.state_dict(), p, _use_new_zipfile_serialization=False)
    ckpt, _ = roundtrip(p, ref)
    assert ckpt.format == "state_dict" and ckpt.saved_devices == ["cpu"]


@pytest.mark.parametrize(
    "key", ["state_dict", "model", "model_state_dict", "net", "ema", "state_dict_ema", "module"]
)
def test_wrapped(tmp_path, ref, key):
    p = tmp_path / f"{key}.pth"
    optimizer = {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0, "params": [0, 1]}]}
    torch.save({key: ref.state_dict(), "epoch": 5, "acc": torch.tensor(0.75),
                "optimizer": optimizer, "notes": "run 3"}, p)
    ckpt, removed = roundtrip(p, ref)
    assert ckpt.format == "wrapped" and ckpt.wrapper_key == key and removed == []
    assert ckpt.top_level_keys == [key, "epoch", "acc", "optimizer", "notes"]
    assert ckpt.extra["epoch"] == 5 and ckpt.extra["acc"] == pytest.approx(0.75)
    assert ckpt.extra["notes"] == "run 3" and key not in ckpt.extra
    assert ckpt.extra["optimizer"] == optimizer
    json.dumps(ckpt.extra)


def test_wrapped_other_key_and_nested(tmp_path, ref):
    p = tmp_path / "student.pt"
    torch.save({"student": ref.state_dict(), "step": 10}, p)
    ckpt, _ = roundtrip(p, ref)
    assert ckpt.wrapper_key == "student"
    p2 = tmp_path / "nested.pt"
    torch.save({"model": {"state_dict": ref.state_dict()}, "epoch": 1}, p2)
    ckpt2, _ = roundtrip(p2, ref)
    assert ckpt2.wrapper_key == "model.state_dict"


def test_explicit_key_picks_ema(tmp_path, ref):
    other = make_net(9)
    p = tmp_path / "timm.pth"
    torch.save({"state_dict": other.state_dict(), "state_dict_ema": ref.state_dict()}, p)
    assert load_checkpoint(p).wrapper_key == "state_dict"
    ckpt = load_checkpoint(p, key="state_dict_ema")
    fresh = make_net(1)
    load_into_model(fresh, ckpt)
    assert_same(fresh, ref)
    with pytest.raises(CheckpointError, match="state_dict_ema"):
        load_checkpoint(p, key="nope")


def test_lightning(tmp_path, ref):
    sd = prefixed(ref.state_dict(), "model.")
    sd["criterion.weight"] = torch.ones(3)  # a loss buffer of the LightningModule
    p = tmp_path / "epoch=3-step=100.ckpt"
    torch.save({"epoch": 3, "global_step": 100, "pytorch-lightning_version": "2.2.0",
                "state_dict": sd, "hyper_parameters": {"lr": 0.1, "width": 4},
                "loops": {}, "callbacks": {}}, p)
    ckpt, removed = roundtrip(p, ref)
    assert ckpt.format == "lightning" and ckpt.wrapper_key == "state_dict"
    assert removed == ["model."]
    assert ckpt.extra["hyper_parameters"] == {"lr": 0.1, "width": 4}
    assert ckpt.extra["global_step"] == 100
    info = describe(ckpt)
    assert info["prefixes"] == ["model."] and info["head"] == "model.fc"
    json.dumps(info)


def test_dataparallel_prefix(tmp_path, ref):
    p = tmp_path / "ddp.pt"
    # DataParallel moves its module to cuda:0 where CUDA exists, so wrap a copy
    torch.save(nn.DataParallel(copy.deepcopy(ref)).state_dict(), p)
    ckpt, removed = roundtrip(p, ref)
    assert removed == ["module."]
    assert describe(ckpt)["prefixes"] == ["module."]


class Compiled(nn.Module):
    """Stands in for torch.compile's OptimizedModule, which holds the model as ``_orig_mod``
    (importing torch._dynamo takes seconds, so the real wrapper is not used here)."""

    def __init__(self, mod: nn.Module) -> None:
        super().__init__()
        self._orig_mod = mod


def test_compile_prefix(tmp_path, ref):
    sd = Compiled(ref).state_dict()
    assert next(iter(sd)).startswith("_orig_mod.")
    p = tmp_path / "compiled.pt"
    torch.save(sd, p)
    _, removed = roundtrip(p, ref)
    assert removed == ["_orig_mod."]


def test_combined_prefixes(tmp_path, ref):
    p = tmp_path / "combo.pt"
    torch.save({"state_dict": prefixed(ref.state_dict(), "model._orig_mod.module.")}, p)
    ckpt, removed = roundtrip(p, ref)
    assert removed == ["model.", "_orig_mod.", "module."]
    assert describe(ckpt)["prefixes"] == ["model.", "_orig_mod.", "module."]


def test_safetensors(tmp_path, ref):
    st = pytest.importorskip("safetensors.torch")
    p = tmp_path / "w.safetensors"
    st.save_file(ref.state_dict(), str(p), metadata={"epoch": "4"})
    ckpt, _ = roundtrip(p, ref)
    assert ckpt.format == "safetensors" and ckpt.top_level_keys == []
    assert ckpt.extra == {"epoch": "4"} and ckpt.saved_devices == []
    # detected by content even with a misleading suffix
    p2 = tmp_path / "w.pt"
    p2.write_bytes(p.read_bytes())
    assert load_checkpoint(p2).format == "safetensors"
    # truncated safetensors
    p3 = tmp_path / "cut.safetensors"
    p3.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_checkpoint(p3)
    assert_one_line(err)


def test_safetensors_missing_package(tmp_path, ref, monkeypatch):
    p = tmp_path / "w.safetensors"
    p.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    monkeypatch.setitem(sys.modules, "safetensors", None)  # makes the import fail
    with pytest.raises(CheckpointError, match="pip install safetensors") as err:
        load_checkpoint(p)
    assert_one_line(err)


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript(tmp_path, ref, how):
    p = tmp_path / f"{how}.pt"
    scripted = torch.jit.script(ref) if how == "script" else torch.jit.trace(ref, X)
    torch.jit.save(scripted, str(p))
    ckpt, removed = roundtrip(p, ref)
    assert ckpt.format == "torchscript" and removed == []
    assert isinstance(ckpt.module, torch.jit.ScriptModule)
    assert ckpt.saved_devices == ["cpu"]
    with torch.no_grad():
        assert torch.equal(ckpt.module(X), ref(X))


def test_pickled_module_needs_trust(tmp_path, ref):
    p = tmp_path / "whole.pt"
    torch.save(ref, p)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(p)
    msg = assert_one_line(err)
    assert "--trust-checkpoint" in msg and f"{Net.__module__}.Net" in msg
    assert "pickled module" in msg
    ckpt, _ = roundtrip(p, ref, trust=True)
    assert ckpt.format == "pickled-module" and isinstance(ckpt.module, Net)
    assert f"{Net.__module__}.Net" in ckpt.unsafe_types
    assert ckpt.saved_devices == ["cpu"]


def test_wrapped_pickled_module(tmp_path, ref):
    p = tmp_path / "wrapped_module.pt"
    torch.save({"model": ref, "epoch": 2}, p)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_checkpoint(p)
    ckpt, _ = roundtrip(p, ref, trust=True)
    assert ckpt.format == "pickled-module" and ckpt.wrapper_key == "model"
    assert ckpt.extra == {"epoch": 2}


def test_trusted_safe_file_has_no_unsafe_types(tmp_path, ref):
    p = tmp_path / "plain.pt"
    torch.save(ref.state_dict(), p)
    assert load_checkpoint(p, trust=True).unsafe_types == []


# ---------------------------------------------------------------------------------------------
# a checkpoint saved on a GPU


def save_as_if_on_gpu(obj, path, monkeypatch, location: str = "cuda:0", **kwargs) -> None:
    """``torch.save`` writing ``location`` as every storage's location tag.

    ``torch.save`` records ``location_tag(storage)`` in each storage's persistent id
    ``('storage', FloatStorage, key, location, numel)``; that is the only thing that differs when
    the tensors live on a GPU (the bytes are copied to host first), so patching it produces what a
    GPU machine writes (``test_real_gpu_checkpoint_matches_fake`` checks this where CUDA exists).
    """
    def tag(storage) -> str:
        # a new string per call, as torch's own taggers return ("cuda:" + str(index)), so the
        # pickle memo (hence data.pkl) is byte-identical to a real GPU save
        return location[:1] + location[1:]

    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", tag)
        torch.save(obj, path, **kwargs)


@pytest.mark.parametrize("zipped", [True, False])
def test_gpu_tagged_checkpoint_loads_on_cpu(tmp_path, ref, monkeypatch, zipped):
    p = tmp_path / "gpu.pt"
    save_as_if_on_gpu({"model": ref.state_dict(), "epoch": 1}, p, monkeypatch,
                      _use_new_zipfile_serialization=zipped)
    if zipped:  # the file really records cuda:0 storages
        with zipfile.ZipFile(p) as zf:
            pkl = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
        assert b"cuda:0" in pkl and b"cpu" not in pkl
    if not torch.cuda.is_available():  # a naive load fails here, so the test is meaningful
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(p, weights_only=True)
    ckpt, _ = roundtrip(p, ref)
    assert ckpt.saved_devices == ["cuda:0"]
    assert describe(ckpt)["saved_devices"] == ["cuda:0"]


def test_mixed_devices_recorded(tmp_path, ref, monkeypatch):
    p = tmp_path / "mixed.pt"
    names = iter(["cuda:1", "cpu"] * 20)
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: next(names))
        torch.save(ref.state_dict(), p)
    assert load_checkpoint(p).saved_devices == ["cpu", "cuda:1"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_real_gpu_checkpoint_matches_fake(tmp_path, ref, monkeypatch):
    real, fake = tmp_path / "real.pt", tmp_path / "fake.pt"
    torch.save(make_net(0).cuda().state_dict(), real)
    save_as_if_on_gpu(ref.state_dict(), fake, monkeypatch)

    def records(path):
        with zipfile.ZipFile(path) as zf:
            return {n.split("/", 1)[1]: zf.read(n) for n in zf.namelist()
                    if "serialization_id" not in n}

    assert records(real) == records(fake)
    ckpt, _ = roundtrip(real, ref)
    assert ckpt.saved_devices == ["cuda:0"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_real_gpu_torchscript_and_module(tmp_path, ref):
    ts, whole = tmp_path / "ts_cuda.pt", tmp_path / "whole_cuda.pt"
    torch.jit.save(torch.jit.script(make_net(0).cuda()), str(ts))
    torch.save(make_net(0).cuda(), whole)
    ckpt, _ = roundtrip(ts, ref)
    assert ckpt.format == "torchscript" and ckpt.saved_devices == ["cuda:0"]
    ckpt, _ = roundtrip(whole, ref, trust=True)
    assert ckpt.format == "pickled-module" and ckpt.saved_devices == ["cuda:0"]


# ---------------------------------------------------------------------------------------------
# refusing arbitrary unpickling


def _write_marker(path: str) -> int:
    with open(path, "w") as fh:
        fh.write("pwned")
    return 0


class WritesMarker:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_write_marker, (self.marker,))


class RunsShell:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > '{self.marker}'",))


@pytest.mark.parametrize("zipped", [True, False])
def test_malicious_function_not_executed(tmp_path, ref, zipped):
    marker = tmp_path / "marker.txt"
    p = tmp_path / "evil.pt"
    torch.save({"state_dict": ref.state_dict(), "note": WritesMarker(str(marker))}, p,
               _use_new_zipfile_serialization=zipped)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(p)
    msg = assert_one_line(err)
    assert f"{_write_marker.__module__}._write_marker" in msg
    assert "--trust-checkpoint" in msg and "weights_only" in msg
    assert not marker.exists()
    # with trust the payload really runs, so the absence above is meaningful
    ckpt = load_checkpoint(p, trust=True)
    assert marker.exists()
    assert ckpt.unsafe_types == [f"{_write_marker.__module__}._write_marker"]
    assert ckpt.extra == {"note": 0} and ckpt.wrapper_key == "state_dict"


def test_env_override_does_not_weaken_refusal(tmp_path, ref, monkeypatch):
    # torch honours TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD only when weights_only is not passed
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "marker.txt"
    p = tmp_path / "evil.pt"
    torch.save({"state_dict": ref.state_dict(), "note": WritesMarker(str(marker))}, p)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_checkpoint(p)
    assert not marker.exists()


def test_malicious_os_system_not_executed(tmp_path):
    marker = tmp_path / "marker.txt"
    p = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.zeros(2, 2), "x": RunsShell(str(marker))}, p)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(p)
    msg = assert_one_line(err)
    assert f"{os.system.__module__}.system" in msg and "--trust-checkpoint" in msg
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# broken files


def test_truncated(tmp_path, ref):
    good = tmp_path / "good.pt"
    torch.save(ref.state_dict(), good)
    data = good.read_bytes()
    for name, blob in [("half.pt", data[: len(data) // 2]), ("tail.pt", data[len(data) // 2:])]:
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
            load_checkpoint(p)
        msg = assert_one_line(err)
        assert "re-save it or check the download" in msg and name in msg


def test_truncated_legacy_and_torchscript(tmp_path, ref):
    for name, save in [("legacy.pt", lambda q: torch.save(ref.state_dict(), q,
                                                          _use_new_zipfile_serialization=False)),
                       ("ts.pt", lambda q: torch.jit.save(torch.jit.script(ref), str(q)))]:
        p = tmp_path / name
        save(p)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
            load_checkpoint(p)
        assert_one_line(err)


def test_random_bytes(tmp_path):
    p = tmp_path / "noise.pt"
    p.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0))
                  .to(torch.uint8).numpy().tobytes())
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_checkpoint(p)
    assert_one_line(err)


def test_empty_missing_directory(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty") as err:
        load_checkpoint(empty)
    assert_one_line(err)
    with pytest.raises(CheckpointError, match="does not exist") as err:
        load_checkpoint(tmp_path / "nope.pt")
    assert_one_line(err)
    with pytest.raises(CheckpointError, match="directory") as err:
        load_checkpoint(tmp_path)
    assert_one_line(err)


def test_unknown_structure_lists_keys(tmp_path):
    p = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "config": {"lr": 0.1}}, p)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(p)
    msg = assert_one_line(err)
    assert "epoch" in msg and "config" in msg
    p2 = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], p2)
    with pytest.raises(CheckpointError, match="list") as err:
        load_checkpoint(p2)
    assert_one_line(err)


# ---------------------------------------------------------------------------------------------
# key and shape mismatches


def _ckpt(sd: dict, path: str = "x.pt") -> LoadedCheckpoint:
    return LoadedCheckpoint(path=path, sha256="", format="state_dict", wrapper_key=None,
                            top_level_keys=list(sd), state_dict=sd, module=None)


def test_missing_and_unexpected_keys_listed(ref):
    sd = dict(ref.state_dict())
    sd["extra_head.weight"] = torch.zeros(2, 2)
    del sd["fc.bias"]
    with pytest.raises(CheckpointError) as err:
        load_into_model(make_net(1), _ckpt(sd))
    msg = assert_one_line(err)
    assert "fc.bias" in msg and "extra_head.weight" in msg
    assert "--arch" in msg and "x.pt" in msg


def test_many_missing_keys_truncated():
    sd = {f"layer{i}.weight": torch.zeros(1) for i in range(12)}
    with pytest.raises(CheckpointError) as err:
        load_into_model(make_net(1), _ckpt(sd))
    msg = assert_one_line(err)
    assert "unexpected 12 key(s)" in msg and "and 7 more" in msg


def test_visible_prefix_suggested(ref):
    sd = dict(ref.state_dict())
    for k in ["conv.weight", "conv.bias"]:  # only a minority carries the prefix
        sd["enc." + k] = sd.pop(k)
    with pytest.raises(CheckpointError, match="strip the prefix 'enc.'") as err:
        load_into_model(make_net(1), _ckpt(sd))
    assert_one_line(err)


def test_wrapped_model_prefix_suggested(ref):
    with pytest.raises(CheckpointError, match="prefix 'module.'") as err:
        load_into_model(nn.DataParallel(make_net(1)), _ckpt(ref.state_dict()))
    assert_one_line(err)


def test_shape_mismatch(ref):
    with pytest.raises(CheckpointError) as err:
        load_into_model(make_net(1, num_classes=5), _ckpt(ref.state_dict()))
    msg = assert_one_line(err)
    assert "fc.weight" in msg and "(3, 16)" in msg and "(5, 16)" in msg
    assert "1 more" in msg  # fc.bias too


def test_num_batches_tracked_tolerated(ref):
    sd = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    model = make_net(1)
    model.bn.num_batches_tracked.fill_(3)
    load_into_model(model, _ckpt(sd))
    assert int(model.bn.num_batches_tracked) == 3
    assert torch.equal(model.fc.weight, ref.fc.weight)
    sd2 = dict(ref.state_dict())
    sd2["bn2.num_batches_tracked"] = torch.tensor(1)
    model2 = make_net(1)
    load_into_model(model2, _ckpt(sd2))
    assert_same(model2, ref)


# ---------------------------------------------------------------------------------------------
# helpers


def test_strip_prefixes_rules(ref):
    sd = ref.state_dict()
    keys = list(sd)
    assert strip_prefixes(sd, keys) == (dict(sd), [])
    out, removed = strip_prefixes(prefixed(sd, "net.module."), keys)
    assert removed == ["net.", "module."] and list(out) == keys
    # stripping that does not help is not done
    out, removed = strip_prefixes(prefixed(sd, "module."), ["a.weight"])
    assert removed == [] and list(out) == list(prefixed(sd, "module."))
    # values are the same tensor objects
    out, _ = strip_prefixes(prefixed(sd, "module."), keys)
    assert all(out[k] is sd[k] for k in keys)


def test_guess_classifier_head():
    mlp = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                        nn.Linear(512, 10))
    assert guess_classifier_head(mlp.state_dict()) == "4"
    assert guess_classifier_head(make_net(0).state_dict()) == "fc"
    assert guess_classifier_head({"conv.weight": torch.zeros(4, 1, 3, 3)}) is None


def test_describe(tmp_path, ref):
    p = tmp_path / "d.pt"
    torch.save({"model": ref.state_dict(), "epoch": 7, "best": float("nan")}, p)
    info = describe(load_checkpoint(p))
    n = sum(v.numel() for v in ref.state_dict().values() if v.is_floating_point())
    assert info["num_params"] == n and info["format"] == "wrapped"
    assert info["wrapper_key"] == "model" and info["top_level_keys"] == ["model", "epoch", "best"]
    assert info["head"] == "fc" and info["head_shape"] == [3, 16]
    assert info["prefixes"] == [] and info["unsafe_types"] == []
    assert info["extra"] == {"epoch": 7, "best": "nan"}
    json.dumps(info, allow_nan=False)
