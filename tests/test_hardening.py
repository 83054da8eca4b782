"""Hardening against folders from elsewhere: no code from sidecars, no clobbered outputs, no lost records.

Each test here failed on the code before the hardening change (the failure it guards against is named in
its docstring) and passes now:

* sidecars cannot make ncbounds run code or read files outside their folder without ``--trust-code``;
* ``-o`` never replaces a device, FIFO, socket or directory, writes *through* symbolic links, and leaves
  nothing behind on a full disk or a read-only folder;
* checkpoints with spaces, non-ASCII letters, ``~``, ``#``, ``%`` or a leading dot get records that every
  reader reads; merge keeps records of different checkpoints that share a relative path;
* ``--resume`` re-evaluates when the data file or the architecture file changes.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers_cli import run_cli
from helpers_models import ARCH, digits_split, one_torch_thread, trained_mlp, write_npz

from ncbounds.batch import ERROR_SUFFIX, merge_results, run_batch
from ncbounds.errors import NCBoundsError, UsageError
from ncbounds.pipeline import EvalOptions, evaluate
from ncbounds.report.results import load_records

REPO = Path(__file__).resolve().parents[1]
FEATURES = REPO / "data" / "example_features.npz"
OPTS = EvalOptions(bounds="test_cp", device="cpu")


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_torch_thread():
        yield



def one_error(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("note: ")]
    assert "Traceback" not in stderr and len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.fixture(scope="module")
def weights():
    return trained_mlp().state_dict()


def checkpoint(folder: Path, name: str, state, sidecar: dict | None = None) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    if sidecar is not None:
        path.with_suffix(".json").write_text(json.dumps(sidecar))
    return path


# ---------------------------------------------------------------------------------------------
# 1. no code execution from sidecars


EVIL = """\
from pathlib import Path
Path({marker!r}).write_text("ran")
import torch
class Net(torch.nn.Module):
    pass
"""

GOOD_MODELS = """\
import torch
from torch import nn

class Tiny(nn.Sequential):
    def __init__(self, width=32):
        super().__init__(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))

def make(width=32) -> nn.Module:
    return Tiny(width)

def unannotated(width=32):
    return Tiny(width)
"""


def test_sidecar_file_architecture_is_not_imported_without_trust_code(tmp_path, weights):
    """Before: a sidecar naming ``evil.py:Net`` was imported by report and batch (exit 0 or 1, file created)."""
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    run.mkdir()
    (run / "evil.py").write_text(EVIL.format(marker=str(marker)))
    ckpt = checkpoint(run, "m.pt", weights, {"arch": "evil.py:Net", "data": "digits"})
    code, out, err = run_cli("report", ckpt)
    line = one_error(err)
    assert code == 2 and out == "" and "--trust-code" in line and "m.json" in line and "evil.py:Net" in line
    code, _, err = run_cli("batch", run, "--out", tmp_path / "res", "--quiet")
    assert code == 2 and "--trust-code" in one_error(err)
    assert not marker.exists() and not (tmp_path / "res").exists()
    with pytest.raises(UsageError, match="--trust-code"):
        evaluate(str(ckpt), device="cpu", bounds="none")
    assert not marker.exists()


def test_sidecar_import_path_to_arbitrary_callable_is_never_called(tmp_path, weights):
    """Before: ``"arch": "subprocess:call"`` with arch_kwargs was called with those arguments."""
    marker = tmp_path / "PWNED2"
    ckpt = checkpoint(tmp_path, "m.pt", weights, {"arch": "subprocess:call", "data": "digits",
                                                  "arch_kwargs": {"args": f"touch {marker}", "shell": True}})
    code, _, err = run_cli("report", ckpt)
    assert code == 2 and "--trust-code" in one_error(err)
    code, _, err = run_cli("report", ckpt, "--trust-code")  # trusted, but still not an nn.Module factory
    line = one_error(err)
    assert code == 2 and "nn.Module" in line and "subprocess:call" in line
    assert not marker.exists()


def test_trusted_sidecar_code_and_typed_specs_work(tmp_path, weights):
    run = tmp_path / "run"
    run.mkdir()
    (run / "models.py").write_text(GOOD_MODELS)
    tiny_state = {k.replace("features.", ""): v for k, v in weights.items()}  # reshaped below
    from ncbounds.models import build_model

    model = build_model("models.py:Tiny", base_dir=str(run))
    model.load_state_dict(dict(zip(model.state_dict(), tiny_state.values(), strict=True)))
    ckpt = checkpoint(run, "m.pt", model.state_dict(), {"arch": "models.py:Tiny", "data": "digits"})
    code, _, err = run_cli("report", ckpt, "--bounds", "none")
    assert code == 2 and "--trust-code" in err
    code, out, err = run_cli("report", ckpt, "--bounds", "none", "--trust-code")
    assert code == 0, err
    # with the flag, a factory function defined in the file is fine, and so is an annotated one
    (run / "m.json").write_text(json.dumps({"arch": "models.py:make", "data": "digits"}))
    assert run_cli("report", ckpt, "--bounds", "none", "--trust-code")[0] == 0
    # typed on the command line, the spec is the user's own: no flag needed
    code, _, err = run_cli("report", ckpt, "--bounds", "none", "--arch", f"{run / 'models.py'}:unannotated")
    assert code == 0, err


def test_sidecar_paths_outside_the_folder_need_trust_code(tmp_path, weights):
    """Before: ``init_checkpoint`` / ``data`` paths leaving the sidecar's folder were read silently."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    xtr, ytr, xte, yte = digits_split()
    write_npz(outside / "d.npz", xtr, ytr, xte, yte)
    torch.save(weights, outside / "init.pt")
    run = tmp_path / "run"
    run.mkdir()
    ckpt = checkpoint(run, "m.pt", weights, {"arch": ARCH, "data": "npz:../elsewhere/d.npz"})
    code, _, err = run_cli("report", ckpt, "--bounds", "none")
    line = one_error(err)
    assert code == 2 and "--trust-code" in line and "outside the sidecar's folder" in line
    assert run_cli("report", ckpt, "--bounds", "none", "--trust-code")[0] == 0
    (run / "m.json").write_text(json.dumps({"arch": ARCH, "data": "digits", "init_checkpoint": str(outside / "init.pt")}))
    code, _, err = run_cli("report", ckpt, "--bounds", "none")
    assert code == 2 and "init_checkpoint" in one_error(err)
    # a symbolic link inside the folder that points out counts as outside
    os.symlink(outside / "d.npz", run / "d.npz")
    (run / "m.json").write_text(json.dumps({"arch": ARCH, "data": "npz:d.npz"}))
    assert run_cli("report", ckpt, "--bounds", "none")[0] == 2
    # inside the folder, or typed by the user: fine
    (run / "d.npz").unlink()
    shutil.copy(outside / "d.npz", run / "d.npz")
    assert run_cli("report", ckpt, "--bounds", "none")[0] == 0
    (run / "m.json").write_text(json.dumps({"arch": ARCH}))
    assert run_cli("report", ckpt, "--bounds", "none", "--data", f"npz:{outside / 'd.npz'}")[0] == 0


# ---------------------------------------------------------------------------------------------
# 2. outputs never clobber what they should not


def _report(*extra):
    return run_cli("report", "--data", f"features:{FEATURES}", "--bounds", "none", "--format", "json", *extra)


def test_output_onto_a_device_node_is_refused(tmp_path):
    """Before: ``-o`` onto a device node replaced it with a regular file (as root)."""
    node = tmp_path / "null-like"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod needs root")
    code, out, err = _report("-o", node)
    assert code == 2 and "character device" in one_error(err)
    assert stat.S_ISCHR(os.lstat(node).st_mode)
    code, _, err = _report("-o", "/dev/full")
    assert code == 2 and "/dev/full" in one_error(err) and stat.S_ISCHR(os.lstat("/dev/full").st_mode)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code, _, err = run_cli("export", tmp_path / "nothing-here", "-o", fifo)
    assert code == 2 and "FIFO" in one_error(err) and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    code, _, err = _report("-o", tmp_path)
    assert code == 2 and "directory" in one_error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "null-like"]


def test_output_through_a_symlink_updates_the_target(tmp_path):
    """Before: the link was replaced by a regular file and its target left stale."""
    target_dir = tmp_path / "real"
    target_dir.mkdir()
    target = target_dir / "report.json"
    target.write_text("old")
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    code, _, err = _report("-o", link)
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text())["data"]["kind"] == "features"
    assert [p.name for p in target_dir.iterdir()] == ["report.json"]  # no temporary left beside the target


def test_output_read_only_folder_and_full_disk_leave_nothing(tmp_path, monkeypatch):
    """Before: a traceback or '.tmp' / 0-byte files were left behind."""
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    folder.chmod(0o555)
    probe = folder / ".probe"
    try:
        probe.touch()
        probe.unlink()
        enforced = False
    except PermissionError:
        enforced = True
    import ncbounds.io.output as output

    if not enforced:  # running as root: permissions are not enforced, inject the error the kernel would give
        real_open = os.open

        def deny(path, flags, *args, **kwargs):
            if str(path).startswith(str(folder)) and flags & os.O_CREAT:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(output.os, "open", deny)
    try:
        code, out, err = _report("-o", folder / "r.json")
        assert code == 1 and "permission denied" in one_error(err) and out == ""
        assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]
    finally:
        folder.chmod(0o755)
        monkeypatch.undo()

    existing = tmp_path / "r.json"
    existing.write_text("previous")
    real_write = os.write

    def full(fd, data):
        real_write(fd, bytes(data)[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output.os, "write", full)
    code, _, err = _report("-o", existing)
    assert code == 1 and "no space left" in one_error(err)
    assert existing.read_text() == "previous" and sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "ro"]
    from ncbounds.io.output import write_atomic

    with pytest.raises(NCBoundsError, match="no space left"):
        write_atomic(tmp_path / "new.csv", "a,b\n")
    assert not (tmp_path / "new.csv").exists()


def test_dash_means_stdout(tmp_path):
    code, out, err = _report("-o", "-")
    assert code == 0 and json.loads(out)["data"]["kind"] == "features" and not (Path.cwd() / "-").exists()


# ---------------------------------------------------------------------------------------------
# 3-5. names, merge identity, resume identity


NAMES = ["a b.pt", "née.pt", "x~y.pt", "50%#1.pt", ".hidden/m.pt"]


@pytest.fixture(scope="module")
def odd_names(tmp_path_factory, weights):
    root = tmp_path_factory.mktemp("odd")
    (root / "ncbounds.json").write_text(json.dumps({"arch": ARCH, "data": "digits"}))
    (root / ".hidden").mkdir()
    (root / ".hidden" / "ncbounds.json").write_text(json.dumps({"arch": ARCH, "data": "digits"}))
    for i, name in enumerate(NAMES):
        checkpoint(root, name, weights, {"epoch": i})
    return root


def test_odd_checkpoint_names_get_records_every_reader_reads(odd_names, tmp_path):
    """Before: ``x~y.pt`` and ``.hidden/m.pt`` records were skipped by export as 'temporary files'."""
    out = tmp_path / "res"
    code, _, err = run_cli("batch", odd_names, "--out", out, "--bounds", "test_cp", "--device", "cpu", "--quiet")
    assert code == 0, err
    assert "1 checkpoint file(s) in hidden folders" in err and ".hidden/m.pt" in err  # said, not silent
    code, out_csv, err = run_cli("export", out, "--format", "csv")
    assert code == 0, err
    table = pd.read_csv(pd.io.common.StringIO(out_csv))
    assert sorted(Path(p).name for p in table["checkpoint"]) == sorted(["a b.pt", "née.pt", "x~y.pt", "50%#1.pt"])
    assert all(not name.startswith(".") for name in os.listdir(out) if name.endswith(".json"))
    # hidden checkpoints are evaluated when the glob names the hidden folder
    code, _, err = run_cli("batch", odd_names, "--out", out, "--bounds", "test_cp", "--device", "cpu", "--quiet",
                           "--glob", ".hidden/*")
    assert code == 0, err
    records = load_records(out)
    assert len(records) == 5 and not records.skipped and not records.error_files
    code, _, err = run_cli("batch", odd_names, "--out", out, "--bounds", "test_cp", "--device", "cpu", "--quiet", "--resume")
    assert code == 0 and "0 evaluated, 4 skipped" in err  # resume finds every odd name's record
    assert run_cli("correlate", out)[0] == 0


def test_export_names_every_skipped_file(odd_names, tmp_path):
    out = tmp_path / "res"
    run_batch(odd_names, out, OPTS, progress=False)
    (out / "notes.txt").write_text("hello")
    (out / "half.json.part").write_text("{")
    (out / "broken.json").write_text("{")
    code, _, err = run_cli("export", out)
    assert code == 0
    for name, why in (("notes.txt", "not a JSON file"), ("half.json.part", "temporary"), ("broken.json", "unreadable")):
        assert any(line.startswith("note: skipped ") and name in line and why in line for line in err.splitlines()), err


def _two_runs(root: Path, weights) -> tuple[Path, Path]:
    runs = []
    for i in (1, 2):
        run = root / f"run{i}"
        state = {k: v + 0.01 * i for k, v in weights.items()}
        checkpoint(run, "final.pt", state, {"arch": ARCH, "data": "digits"})
        out = root / f"res{i}"
        run_batch(run, out, OPTS, progress=False)
        runs.append(out)
    return runs[0], runs[1]


def test_merge_keeps_both_records_of_two_runs_with_the_same_relative_path(tmp_path, weights):
    """Before: the second run's final.pt record was dropped as a 'name clash'."""
    res1, res2 = _two_runs(tmp_path, weights)
    out = tmp_path / "merged"
    summary = merge_results(out, [res1, res2])
    assert summary.records == 2 and summary.clashes == 1
    shas = sorted(r["checkpoint"]["sha256"] for r in load_records(out))
    assert len(set(shas)) == 2
    assert len(load_results_rows(out)) == 2


def load_results_rows(folder):
    from ncbounds import load_results

    return load_results(folder)


def test_merge_out_into_itself_never_rewrites_a_record(tmp_path, weights):
    """Before: ``merge OUT OUT other`` could replace a record of OUT with another folder's."""
    res1, res2 = _two_runs(tmp_path, weights)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in res1.iterdir() if p.suffix == ".json"}
    summary = merge_results(res1, [res1, res2])
    for name, (mtime, content) in before.items():
        assert (res1 / name).stat().st_mtime_ns == mtime and (res1 / name).read_bytes() == content
    assert summary.records == 2
    # a conflict (same identity, other numbers) keeps OUT's record and names both sources
    other = tmp_path / "other"
    other.mkdir()
    record = json.loads((res1 / "final.pt.json").read_text())
    record["errors"]["test"]["errors"] += 1
    record["batch"]["created"] = "2999-01-01T00:00:00+00:00"
    (other / "final.pt.json").write_text(json.dumps(record))
    lines: list[str] = []
    summary = merge_results(res1, [other], log=lines.append)
    assert summary.conflicts == 1 and (res1 / "final.pt.json").read_bytes() == before["final.pt.json"][1]
    conflict = [line for line in lines if line.startswith("conflict:")][0]
    assert str(res1 / "final.pt.json") in conflict and str(other / "final.pt.json") in conflict


def test_resume_sees_edited_data(tmp_path, weights):
    """Before: editing the npz left the record 'up to date'."""
    run = tmp_path / "run"
    run.mkdir()
    xtr, ytr, xte, yte = digits_split()
    write_npz(run / "d.npz", xtr, ytr, xte, yte)
    checkpoint(run, "m.pt", weights, {"arch": ARCH, "data": "npz:d.npz"})
    out = tmp_path / "res"
    assert run_batch(run, out, OPTS, progress=False).done == 1
    again = run_batch(run, out, OPTS, progress=False, resume=True)
    assert (again.done, again.skipped) == (0, 1)
    write_npz(run / "d.npz", xtr, ytr, xte[:-5], yte[:-5])  # edit the data
    again = run_batch(run, out, OPTS, progress=False, resume=True)
    assert (again.done, again.skipped) == (1, 0)
    assert json.loads((out / "m.pt.json").read_text())["data"]["splits"]["test"]["n"] == len(yte) - 5


def test_resume_sees_an_edited_architecture_file(tmp_path):
    """Before: editing models.py left the record 'up to date'."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "models.py").write_text(GOOD_MODELS)
    from ncbounds.models import build_model

    model = build_model("models.py:Tiny", base_dir=str(run))
    checkpoint(run, "m.pt", model.state_dict(), {"arch": "models.py:Tiny", "data": "digits"})
    opts = EvalOptions(bounds="test_cp", device="cpu", trust_code=True)
    out = tmp_path / "res"
    assert run_batch(run, out, opts, progress=False).done == 1
    first = json.loads((out / "m.pt.json").read_text())
    assert run_batch(run, out, opts, progress=False, resume=True).skipped == 1
    with open(run / "models.py", "a") as fh:
        fh.write("\n# a comment changes the file's contents\n")
    again = run_batch(run, out, opts, progress=False, resume=True)
    assert (again.done, again.skipped) == (1, 0)
    assert json.loads((out / "m.pt.json").read_text())["batch"]["inputs_hash"] != first["batch"]["inputs_hash"]
    assert not list(out.glob(f"*{ERROR_SUFFIX}"))


# ---------------------------------------------------------------------------------------------
# 6. layerwise fits count each representation once


def test_cnn_pooled_last_block_is_reported_once_as_penultimate(tmp_path):
    """Before: ``features.5`` (the last conv block, globally averaged) duplicated the penultimate layer in
    the He–Su fit, e.g. ρ = 0.350 instead of 0.234 on a 1-D CNN."""
    from ncbounds.io.datasets import load_data
    from ncbounds.metrics.layerwise import he_su_fit
    from ncbounds.models import build_model

    torch.manual_seed(0)
    spec = "mnist1d:n=1000"
    data = load_data(spec)
    model = build_model("cnn1d:channels=16")
    x, y = torch.as_tensor(data.train.x), torch.as_tensor(data.train.y)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(60):
        idx = torch.randint(0, len(x), (128,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    torch.save(model.state_dict(), tmp_path / "cnn.pt")
    rec = evaluate(str(tmp_path / "cnn.pt"), arch="cnn1d:channels=16", data=spec, layers="all", bounds="none", device="cpu")
    assert list(rec.layers) == ["features.1", "features.3", "penultimate"]
    assert rec.layers["penultimate"]["aliases"] == ["features.5"]
    assert any("features.5" in n and "reported once" in n for n in rec.notes)
    for split in ("train", "test"):
        fuzz = [rec.layers[n]["metrics"][split]["separation_fuzziness"] for n in rec.layers]
        assert rec.layerwise[split] == pytest.approx(he_su_fit(fuzz), rel=1e-12)
        doubled = he_su_fit([*fuzz[:2], fuzz[2], fuzz[2]])  # what counting the duplicate would give
        assert doubled["layerwise_rho"] != pytest.approx(rec.layerwise[split]["layerwise_rho"], rel=1e-3)
    assert [rec.layers[n]["index"] for n in rec.layers] == [1, 2, 3]


def test_same_features_groups_equal_layers_only():
    from ncbounds.features import PENULTIMATE, SameFeatures

    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 8, generator=g)
    same = SameFeatures()
    for _ in range(3):
        b = torch.randn(50, 8, generator=g)
        pen = b * (1 + 1e-7)  # the same numbers up to float32 rounding
        same.update({"a": a, "b": b, "b2": b.clone(), "c": torch.randn(50, 8, generator=g), PENULTIMATE: pen})
    assert same.aliases() == {"b": PENULTIMATE, "b2": PENULTIMATE}
    other = SameFeatures()
    other.update({"a": a, "b": a + 1.0, "b2": a + 1.0, "c": a, PENULTIMATE: a - 1.0})
    assert same.merge(other).aliases() == {"b2": "b"}  # must agree on both splits: b and b2 still do
    close = SameFeatures()
    x = torch.randn(50, 8, generator=g)
    close.update({"x": x, PENULTIMATE: x + 1e-3 * x.abs().max()})  # a real (if small) difference
    assert close.aliases() == {}


# ---------------------------------------------------------------------------------------------
# 7. hyperparameters are declared, not guessed


def test_sidecar_keys_split_into_hyperparameters_and_metadata(tmp_path):
    from ncbounds.io.sidecar import read_sidecar

    (tmp_path / "m.pt").write_bytes(b"")
    keys = {"epoch": 3, "lr": 0.1, "layers": [64, 64], "test_error": 0.2, "train_acc": 0.99, "val_loss": 1.0,
            "wall_time": 12.0, "seconds": 3.0, "created": "2026-01-01", "git_commit": "abc", "compiled": True,
            "ddp": False, "optimizer_state": {"momentum": 0.9}, "arch": "mlp", "arch_kwargs": {"width": 8}}
    (tmp_path / "m.json").write_text(json.dumps(keys))
    side = read_sidecar(tmp_path / "m.pt")
    assert side.hparams_source == "sidecar keys"
    assert side.hyperparameters == {"epoch": 3, "lr": 0.1, "layers": [64, 64]}
    assert set(side.metadata) == {"test_error", "train_acc", "val_loss", "wall_time", "seconds", "created", "git_commit",
                                  "compiled", "ddp", "optimizer_state"}
    (tmp_path / "ncbounds.json").write_text(json.dumps({"hparams": {"width": 8}}))
    (tmp_path / "m.json").write_text(json.dumps({**keys, "hparams": {"lr": 0.1}}))
    side = read_sidecar(tmp_path / "m.pt")
    assert side.hparams_source == "hparams" and side.hyperparameters == {"width": 8, "lr": 0.1}
    assert "epoch" in side.metadata and "lr" in side.metadata  # declared elsewhere: the loose keys are metadata


def test_correlate_uses_declared_hyperparameters_and_says_why(tmp_path):
    """Before: every sidecar key (the target ``test_error`` itself, timings, flags) was a hyperparameter, so
    every group held one checkpoint and every Ψ was '—' with no explanation; arch_kwargs never counted."""
    root = tmp_path / "sweep"
    root.mkdir()
    (root / "ncbounds.json").write_text(json.dumps({"arch": "mlp:input_dim=64,num_classes=10,depth=2", "data": "digits"}))
    for width in (16, 32):
        for steps in (10, 60):
            model = trained_mlp(f"mlp:input_dim=64,num_classes=10,width={width},depth=2", steps=steps)
            checkpoint(root, f"w{width}_s{steps}.pt", model.state_dict(),
                       {"arch_kwargs": {"width": width}, "steps": steps, "test_error": 0.01 * steps + width,
                        "seconds": 1.0 + width + steps, "compiled": steps > 20})
    out = tmp_path / "res"
    assert run_batch(root, out, OPTS, progress=False).failed == 0
    frame = load_results_rows(out)
    assert {"hp.steps", "hp.arch.width", "meta.test_error", "meta.seconds", "meta.compiled"} <= set(frame.columns)
    assert "hp.test_error" not in frame.columns and "hp.seconds" not in frame.columns
    code, text, err = run_cli("correlate", out)
    assert code == 0, err
    head = text.splitlines()[0]
    assert "over: steps, arch.width" in head
    assert "psi.steps: 2 group(s) where only steps varies" in text
    assert "arch.input_dim (one value in all checkpoints)" in text
    from ncbounds.report.correlate import correlate_table

    table = correlate_table(frame)
    assert table["Psi"].notna().any()
    code, text, _ = run_cli("correlate", out, "--hparams", "steps")
    assert code == 0 and "over: steps (from --hparams)" in text and "psi.steps: 1 group(s) where only steps varies" in text


# ---------------------------------------------------------------------------------------------
# 8. one-sentence messages


def test_input_width_mismatch_names_both_shapes(tmp_path):
    """Before: 'unexpected RuntimeError: mat1 and mat2 shapes cannot be multiplied …'."""
    arch40 = "mlp:input_dim=40,num_classes=10,width=16,depth=2"
    from ncbounds.models import build_model

    torch.save(build_model(arch40).state_dict(), tmp_path / "m40.pt")
    code, _, err = run_cli("report", tmp_path / "m40.pt", "--arch", arch40, "--data", "digits")
    line = one_error(err)
    assert code == 1 and "expects 40 input features" in line and "(64,)" in line and "unexpected" not in line


def test_missing_checkpoint_is_named_before_the_data(tmp_path):
    """Before: a missing checkpoint without --data said 'no data given'."""
    code, _, err = run_cli("report", tmp_path / "nope.pt")
    line = one_error(err)
    assert code == 1 and "nope.pt does not exist" in line


@pytest.mark.parametrize("kind", ["pickle", "text", "json", "npy"])
def test_non_torch_files_are_named_as_such(tmp_path, kind):
    """Before: 'truncated or corrupt (Unsupported operand 149)' and a torch warning."""
    import pickle

    import numpy as np

    path = tmp_path / "thing.pt"
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=4))
    elif kind == "text":
        path.write_text("epoch 1: loss 0.3\n")
    elif kind == "json":
        path.write_text(json.dumps({"state_dict": {}}))
    else:
        with open(path, "wb") as fh:
            np.save(fh, np.zeros(3))
    code, _, err = run_cli("report", path, "--arch", ARCH, "--data", "digits")
    line = one_error(err)
    assert code == 1 and "is not a PyTorch checkpoint" in line and "torch.save" in line and "Warning" not in err


def test_plot_epochs_without_an_epoch_is_a_usage_error(odd_names, tmp_path):
    """Before: exit 1 (a data error) for what is a wrong command."""
    out = tmp_path / "res"
    run_batch(odd_names, out, OPTS, progress=False)  # sidecars have 'epoch' ...
    for record in out.glob("*.json"):  # ... remove it from the records
        data = json.loads(record.read_text())
        data["provenance"]["hyperparameters"].pop("epoch")
        record.write_text(json.dumps(data))
    code, _, err = run_cli("plot", out, "--kind", "epochs", "-o", tmp_path / "e.png")
    assert code == 2 and "epoch" in one_error(err) and "--x" in err


def test_case_insensitive_builtin_name_is_noted(tmp_path, weights):
    checkpoint(tmp_path, "m.pt", weights, {"arch": "MLP:input_dim=64,num_classes=10,width=32,depth=2", "data": "digits"})
    rec = evaluate(str(tmp_path / "m.pt"), device="cpu", bounds="none")
    assert any("'MLP'" in n and "built-in 'mlp'" in n and "MLP" in n and "m.json" in n for n in rec.notes), rec.notes


def _closed_pipe_run(*args):
    """Run the CLI with stdout on a pipe whose reader has already gone (like `| head` after its line)."""
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        return subprocess.run([sys.executable, "-c", "from ncbounds.cli.main import main; main()", *map(str, args)], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, timeout=120)
    finally:
        os.close(write_end)


def test_broken_pipe_exits_quietly():
    """Before: `ncbounds list-bounds | head -1` ended with 'error: unexpected BrokenPipeError' and exit 1."""
    for args in (["list-bounds"], ["export", REPO / "data" / "fixtures" / "demo-records" / "records", "--format", "csv"]):
        done = _closed_pipe_run(*args)
        assert done.returncode == 0 and done.stderr == "", (args, done.returncode, done.stderr)
