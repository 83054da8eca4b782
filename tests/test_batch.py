"""Batch evaluation (`ncbounds batch`, DESIGN §7 and §9): one atomic record per checkpoint, resumable.

A folder of 12 tiny MLP checkpoints (width 16 on `digits`, a few SGD steps each, different seeds and
"epochs") saved with mixed wrappers (plain state_dict, {'state_dict'}, {'model'}, {'model_state_dict'},
{'net'}, Lightning with a 'model.' prefix, DDP 'module.', torch.compile '_orig_mod.'), per-file
sidecars with hyperparameters, a per-folder ``ncbounds.json`` naming arch, data and an init checkpoint,
plus a corrupt checkpoint and files that must not be evaluated. Checked: discovery and names, one
record per checkpoint with its hyperparameters, the corrupt one as an error record (exit code 3),
``--jobs 2`` equal to ``--jobs 1`` value for value, SIGKILL mid-run then ``--resume`` (nothing lost or
duplicated, no temporary files, finished records not re-evaluated), and the resume identity.

Bounds: the cheap test-set certificates (``test_cp,test_kl``) when the catalogue provides them, else
``none``. While other bound modules are still being written, modules of ``BOUND_MODULES`` that do not
import are left out (in this process, and through a generated ``sitecustomize`` on ``PYTHONPATH`` in
subprocesses and spawned workers); once the catalogue is complete this does nothing.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from ncbounds.cli.main import main  # cli/main.py registers `batch`; registered below if it does not (yet)

import ncbounds.batch
import ncbounds.batch.local
import ncbounds.bounds.runner as bound_runner
from ncbounds.batch import (
    ERROR_SUFFIX,
    find_checkpoints,
    options_hash,
    read_results,
    result_name,
    run_batch,
)
from ncbounds.io.datasets import load_data
from ncbounds.models import build_model
from ncbounds.pipeline import EvalOptions

if "batch" not in main.commands:
    from ncbounds.cli.batch_cmd import batch

    main.add_command(batch)

REPO = Path(__file__).resolve().parents[1]
ARCH = "mlp:input_dim=64,num_classes=10,width=16,depth=2"
DATA = "digits"


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a module being written may fail in any way
        return False
    return True


_AVAILABLE_BOUND_MODULES = tuple(m for m in bound_runner.BOUND_MODULES if _importable(m))
_PATCH_CATALOGUE = _AVAILABLE_BOUND_MODULES != tuple(bound_runner.BOUND_MODULES)
_CERTIFICATES = "ncbounds.bounds.certificates" in _AVAILABLE_BOUND_MODULES and _importable("ncbounds.perturb")
BOUNDS = "test_cp,test_kl" if _CERTIFICATES else "none"

_SITECUSTOMIZE = '''\
import concurrent.futures as cf
import hashlib
import importlib
try:
    import ncbounds.bounds.runner as _runner
    _keep = []
    for _name in _runner.BOUND_MODULES:
        try:
            importlib.import_module(_name)
            _keep.append(_name)
        except Exception:
            pass
    _runner.BOUND_MODULES = tuple(_keep)
except Exception:
    pass
'''

#: Runs the click group with `batch` registered whether or not cli/main.py registers it already.
_CLI = ("import sys; from ncbounds.cli.main import main; from ncbounds.cli.batch_cmd import batch; "
        "'batch' in main.commands or main.add_command(batch); main(prog_name='ncbounds')")


@pytest.fixture(scope="module", autouse=True)
def child_env(tmp_path_factory):
    """Environment for subprocesses and spawned workers (this process's os.environ gets PYTHONPATH too).

    Tiny models on loaded cores: one torch thread here and in the subprocesses (spinning OpenMP
    threads of an oversubscribed machine cost more than they save); spawned workers get
    ``cores // jobs`` threads from the batch itself.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    extra = [str(REPO)]
    with pytest.MonkeyPatch.context() as mp:
        if _PATCH_CATALOGUE:
            site = tmp_path_factory.mktemp("site")
            (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
            extra.insert(0, str(site))
            mp.setattr(bound_runner, "BOUND_MODULES", _AVAILABLE_BOUND_MODULES)
        path = os.pathsep.join(extra + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
        mp.setenv("PYTHONPATH", path)
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = "1"
        yield env
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# the folder of checkpoints


def _train(seed: int, steps: int, lr: float) -> dict:
    torch.manual_seed(seed)
    model = build_model(ARCH)
    data = load_data(DATA)
    x, y = torch.as_tensor(data.train.x), torch.as_tensor(data.train.y)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):  # plain SGD by hand: torch.optim would import torch._dynamo (seconds)
        idx = torch.randint(0, len(x), (64,), generator=g)
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _prefixed(sd: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in sd.items()}


WRAPPERS = {
    "plain": lambda sd: sd,
    "state_dict": lambda sd: {"state_dict": sd, "epoch": 1},
    "model": lambda sd: {"model": sd, "optimizer": {"lr": 0.1}},
    "model_state_dict": lambda sd: {"model_state_dict": sd, "step": 7},
    "net": lambda sd: {"net": sd},
    "lightning": lambda sd: {"state_dict": _prefixed(sd, "model."), "pytorch-lightning_version": "2.2.0",
                             "global_step": 10, "epoch": 2},
    "ddp": lambda sd: _prefixed(sd, "module."),
    "compile": lambda sd: {"model": _prefixed(sd, "_orig_mod.")},
}

# relative path -> (wrapper, seed, epoch, lr); run_a/ has a folder ncbounds.json, the others per-file sidecars
LAYOUT = {
    "top_a.pt": ("plain", 1, 1, 0.1),
    "top_b.pth": ("state_dict", 2, 2, 0.1),
    "top_c.bin": ("ddp", 3, 3, 0.05),
    "run_a/epoch_01.pt": ("plain", 10, 1, 0.1),
    "run_a/epoch_02.pt": ("model", 11, 2, 0.1),
    "run_a/epoch_03.ckpt": ("lightning", 12, 3, 0.1),
    "run_a/epoch_04.pth": ("ddp", 13, 4, 0.1),
    "run_a/epoch_05.pt": ("model_state_dict", 14, 5, 0.1),
    "run_b/nested/step_1.pt": ("net", 20, 1, 0.05),
    "run_b/nested/step_2.ckpt": ("lightning", 21, 2, 0.05),
    "run_b/nested/step_3.pt": ("compile", 22, 3, 0.05),
    "run_b/nested/step_4.pt": ("state_dict", 23, 4, 0.05),
}
CORRUPT = "corrupt.pt"
ALL = sorted([*LAYOUT, CORRUPT])


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for rel, (wrapper, seed, epoch, lr) in LAYOUT.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(WRAPPERS[wrapper](_train(seed, steps=epoch + 1, lr=lr)), path)
        side = {"epoch": epoch, "lr": lr, "seed": seed, "wrapper": wrapper}
        if not rel.startswith("run_a/"):
            side.update(arch=ARCH, data=DATA)
        path.with_suffix(".json").write_text(json.dumps(side))
    (root / "run_a" / "ncbounds.json").write_text(json.dumps({"arch": ARCH, "data": DATA, "init_checkpoint": "init.pt"}))
    torch.manual_seed(0)
    torch.save(build_model(ARCH).state_dict(), root / "run_a" / "init.pt")  # referenced: not evaluated
    good = (root / "top_a.pt").read_bytes()
    (root / CORRUPT).write_bytes(good[: len(good) // 2])  # truncated
    (root / "corrupt.json").write_text(json.dumps({"arch": ARCH, "data": DATA, "epoch": 9}))
    torch.save({"lr": 0.1}, root / "run_b" / "optimizer.pt")  # training state, not a model
    (root / ".cache").mkdir()
    torch.save(_train(5, 1, 0.1), root / ".cache" / "hidden.pt")  # hidden folder
    (root / "notes.txt").write_text("not a checkpoint")
    return root


def _invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {result.exception}") from result.exception
    return result.exit_code, result.stderr


def _records(out: Path) -> dict[str, dict]:
    return {p.name[: -len(".json")]: json.loads(p.read_text()) for p in out.glob("*.json") if not p.name.endswith(ERROR_SUFFIX)}


def _numbers(record: dict) -> dict:
    return {k: record[k] for k in ("layers", "errors", "bounds", "layerwise")}


@pytest.fixture(scope="module")
def reference(tree, child_env, tmp_path_factory):
    """An uninterrupted `ncbounds batch` (jobs=1, in-process): exit code, stderr, results folder."""
    out = tmp_path_factory.mktemp("ref") / "results"
    t0 = time.perf_counter()
    code, stderr = _invoke("batch", tree, "--out", out, "--bounds", BOUNDS, "--device", "cpu")
    return {"code": code, "stderr": stderr, "out": out, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------
# discovery and names


def test_find_checkpoints_rules(tree):
    found = [p.relative_to(tree).as_posix() for p in find_checkpoints(tree)]
    assert found == ALL  # sorted; no init.pt (named by ncbounds.json), optimizer.pt, hidden or non-checkpoint files
    run_a = ["epoch_01.pt", "epoch_02.pt", "epoch_03.ckpt", "epoch_04.pth", "epoch_05.pt"]
    assert [p.name for p in find_checkpoints(tree, "run_a/*")] == run_a
    assert find_checkpoints(tree, "**/*", exclude=[tree / "run_b"]) == [p for p in find_checkpoints(tree) if "run_b" not in p.parts]


def test_find_checkpoints_skips_symlink_duplicates_and_results(tmp_path):
    torch.save({"w": torch.zeros(1)}, tmp_path / "epoch_1.ckpt")
    (tmp_path / "last.ckpt").symlink_to(tmp_path / "epoch_1.ckpt")
    (tmp_path / "ncbounds-results").mkdir()
    torch.save({"w": torch.zeros(1)}, tmp_path / "ncbounds-results" / "x.pt")
    torch.save({"w": torch.zeros(1)}, tmp_path / "init.pt")  # not named by any sidecar: evaluated
    assert [p.name for p in find_checkpoints(tmp_path)] == ["epoch_1.ckpt", "init.pt"]


def test_result_names_are_stable_and_distinct(tmp_path):
    assert result_name(tmp_path / "sub" / "epoch_03.pt", tmp_path) == "sub__epoch_03.pt"
    assert result_name(tmp_path / "epoch_03.ckpt", tmp_path) == "epoch_03.ckpt"
    rels = ["a/b.pt", "a__b.pt", "a_/b.pt", "a/_b.pt", "a b/c.pt", "a_b/c.pt", "x" * 300 + ".pt", "y" * 300 + ".pt"]
    names = [result_name(tmp_path / r, tmp_path) for r in rels]
    assert len(set(names)) == len(names)
    assert all(len(n) <= 180 and "/" not in n for n in names)
    assert names[1].startswith("a__b.pt~") and names[0] == "a__b.pt"


def test_options_hash_covers_what_changes_numbers():
    base = EvalOptions(data="digits", bounds="none")
    h = options_hash(base, [])
    assert h == options_hash(EvalOptions(data="digits", bounds="none", device="cuda", batch_size=7, progress=True), [])
    for change in ({"seed": 1}, {"delta": 0.1}, {"layers": "all"}, {"arch": ARCH}, {"shots": (1, 5)}, {"convention": "x"}):
        assert options_hash(EvalOptions(**{"data": "digits", "bounds": "none", **change}), []) != h, change
    assert options_hash(base, ["test_kl", "test_cp"]) == options_hash(base, ["test_cp", "test_kl"]) != h


# ---------------------------------------------------------------------------------------------
# the batch itself


def test_one_record_per_checkpoint_and_error_record(tree, reference):
    out = reference["out"]
    assert reference["code"] == 3, reference["stderr"]
    records = _records(out)
    assert sorted(records) == sorted(result_name(tree / r, tree) for r in LAYOUT)
    assert "run_b__nested__step_2.ckpt" in records
    for rel, (wrapper, seed, epoch, lr) in LAYOUT.items():
        rec = records[result_name(tree / rel, tree)]
        hp = rec["provenance"]["hyperparameters"]
        assert (hp["epoch"], hp["lr"], hp["seed"]) == (epoch, lr, seed)
        assert rec["provenance"]["metadata"] == {"wrapper": wrapper}  # a wrapper flag is not a hyperparameter
        b = rec["batch"]
        assert b["relative_path"] == rel and b["root"] == str(tree.resolve())
        assert b["checkpoint_sha256"] == rec["checkpoint"]["sha256"] == hashlib.sha256((tree / rel).read_bytes()).hexdigest()
        assert len(b["options_hash"]) == 64 and len(b["sidecar_hash"]) == 64
        assert rec["errors"]["test"]["n"] > 0 and rec["model"]["arch"] == ARCH
        if BOUNDS != "none":
            assert {x["name"] for x in rec["bounds"]} == {"test_cp", "test_kl"}
    assert len({r["batch"]["options_hash"] for r in records.values()}) == 1
    prefixes = {records[result_name(tree / r, tree)]["checkpoint"]["prefixes_stripped"] == [] for r in LAYOUT}
    assert prefixes == {True, False}  # some wrappers needed a prefix stripped

    errors = sorted(out.glob(f"*{ERROR_SUFFIX}"))
    assert [p.name for p in errors] == [f"corrupt.pt{ERROR_SUFFIX}"]
    err = json.loads(errors[0].read_text())
    reason = err["error"]["reason"]
    assert "\n" not in reason and reason.endswith(".") and "corrupt" in reason, reason
    assert err["error"]["type"] == "CheckpointError"
    assert err["checkpoint"]["path"] == str((tree / CORRUPT).resolve()) and err["checkpoint"]["relative_path"] == CORRUPT

    lines = reference["stderr"].strip().splitlines()
    assert lines[-1].startswith("batch: 13 checkpoints: 12 evaluated, 0 skipped (up to date), 1 failed"), lines
    assert any(line.startswith("failed: corrupt.pt: ") for line in lines)
    assert any("eta" in line for line in lines)  # the progress bar
    assert "Traceback" not in reference["stderr"]
    assert not list(out.glob(".*.tmp"))
    ok, failed = read_results(out)
    assert len(ok) == 12 and [f["checkpoint"]["relative_path"] for f in failed] == [CORRUPT]


def test_jobs_2_equals_jobs_1(tree, reference, child_env, tmp_path):
    out = tmp_path / "jobs2"
    summary = run_batch(tree, out, EvalOptions(bounds=BOUNDS, device="cpu"), jobs=2, progress=False)
    assert (summary.done, summary.skipped, summary.failed, summary.exit_code) == (12, 0, 1, 3)
    assert [f.relative_path for f in summary.failures] == [CORRUPT]
    ref, par = _records(reference["out"]), _records(out)
    assert sorted(ref) == sorted(par)
    for name in ref:
        assert _numbers(par[name]) == _numbers(ref[name]), name
        assert par[name]["batch"]["options_hash"] == ref[name]["batch"]["options_hash"]
        assert par[name]["provenance"]["hyperparameters"] == ref[name]["provenance"]["hyperparameters"]
    assert (out / f"corrupt.pt{ERROR_SUFFIX}").is_file()


def test_sigkill_then_resume_loses_and_duplicates_nothing(tree, reference, child_env, tmp_path, jobs=1):
    out = tmp_path / "killed"
    args = ["batch", str(tree), "--out", str(out), "--bounds", BOUNDS, "--device", "cpu", "--quiet", "--jobs", str(jobs)]
    proc = subprocess.Popen([sys.executable, "-c", _CLI, *args], env=child_env, cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    try:
        while len([p for p in out.glob("*.json") if not p.name.endswith(ERROR_SUFFIX)]) < 2:
            assert proc.poll() is None, f"batch ended before it could be killed: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no records appeared"
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the batch process and its workers
        proc.wait()
        proc.stderr.close()

    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.json") if not p.name.endswith(ERROR_SUFFIX)}
    assert 2 <= len(before) < len(LAYOUT)
    for p in out.glob("*.json"):
        json.loads(p.read_text())  # atomic: no half-written record
    (out / ".top_a.pt.json.999.deadbeef.tmp").write_text('{"half": ')  # as if killed mid-write

    code, stderr = _invoke("batch", tree, "--out", out, "--bounds", BOUNDS, "--device", "cpu", "--quiet", "--resume")
    assert code == 3, stderr
    assert f"{len(before)} skipped" in stderr.strip().splitlines()[-1]
    ref, now = _records(reference["out"]), _records(out)
    assert sorted(now) == sorted(ref)  # nothing lost, nothing duplicated
    for name in ref:
        assert _numbers(now[name]) == _numbers(ref[name]), name
    assert sorted(p.name for p in out.glob(f"*{ERROR_SUFFIX}")) == [f"corrupt.pt{ERROR_SUFFIX}"]
    assert not list(out.glob(".*.tmp"))
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        [f"{n}.json" for n in ref] + [f"corrupt.pt{ERROR_SUFFIX}"])
    for name, (mtime, content) in before.items():  # finished ones were not evaluated again
        assert (out / name).stat().st_mtime_ns == mtime and (out / name).read_bytes() == content, name


def test_resume_identity(tree, reference, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(tree, root)
    out = root / "ncbounds-results"  # the default --out
    shutil.copytree(reference["out"], out)
    torch.save(_train(30, 2, 0.1), root / CORRUPT)  # the failed checkpoint is fixed
    side = root / "run_a" / "epoch_02.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "epoch": 20}))  # a sidecar is edited
    opts = EvalOptions(bounds=BOUNDS, device="cpu")

    s = run_batch(root, None, opts, resume=True, progress=False)
    assert (s.done, s.skipped, s.failed, s.exit_code) == (2, 11, 0, 0)
    assert not (out / f"corrupt.pt{ERROR_SUFFIX}").exists()  # the stale error record is gone
    assert json.loads((out / "corrupt.pt.json").read_text())["provenance"]["hyperparameters"]["epoch"] == 9
    assert json.loads((out / "run_a__epoch_02.pt.json").read_text())["provenance"]["hyperparameters"]["epoch"] == 20

    torch.save(_train(31, 2, 0.1), root / "top_a.pt")  # new weights under the same name
    s = run_batch(root, None, opts, glob="top_*", resume=True, progress=False)
    assert (s.done, s.skipped) == (1, 2)

    seed1 = EvalOptions(bounds=BOUNDS, device="cpu", seed=1)  # options that change numbers: stale
    s = run_batch(root, None, seed1, glob="run_b/**/*", resume=True, progress=False)
    assert (s.done, s.skipped) == (4, 0)
    same = EvalOptions(bounds=BOUNDS, device="cpu", seed=1, batch_size=64)  # batch size/device: not stale
    s = run_batch(root, None, same, glob="run_b/**/*", resume=True, progress=False)
    assert (s.done, s.skipped) == (0, 4)
    assert len(_records(out)) == 13


def test_cli_global_errors_are_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, code in (
        ([tmp_path / "missing"], 2),
        ([empty, "--bounds", "none"], 2),
        ([empty, "--bounds", "no_such_bound"], 2),
        ([empty, "--bounds", "none", "--jobs", "0"], 2),
        ([empty, "--bounds", "none", "--delta", "2"], 2),
    ):
        got, stderr = _invoke("batch", *args)
        assert got == code, (args, stderr)
        assert "Traceback" not in stderr
        if args[0] == empty:
            assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error: "), stderr
    _, stderr = _invoke("batch", empty, "--bounds", "none")
    assert "no checkpoints" in stderr and "--glob" in stderr



class _DyingPool:
    """In-process stand-in for ProcessPoolExecutor whose worker "dies" (out of memory) on ``a_dies.pt``."""

    created = 0

    def __init__(self, max_workers, mp_context=None, initializer=None, initargs=()):
        self.broken = False
        _DyingPool.created += 1

    def submit(self, fn, task):
        if self.broken:
            raise BrokenProcessPool("A process in the process pool was terminated abruptly.")
        future = cf.Future()
        if task.relative_path == "a_dies.pt":
            self.broken = True
            future.set_exception(BrokenProcessPool("A process in the process pool was terminated abruptly."))
        else:
            future.set_result(fn(task))
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        pass


def test_dead_worker_is_recorded_and_the_batch_goes_on(tree, tmp_path, monkeypatch):
    root = tmp_path / "runs"
    root.mkdir()
    for name in ("a_dies.pt", "b_ok.pt", "c_ok.pt"):
        shutil.copy(tree / "top_a.pt", root / name)
        shutil.copy(tree / "top_a.json", root / name.replace(".pt", ".json"))
    monkeypatch.setattr(ncbounds.batch.local.cf, "ProcessPoolExecutor", _DyingPool)
    s = run_batch(root, None, EvalOptions(bounds="none", device="cpu"), jobs=2, progress=False)
    assert (s.total, s.done, s.failed, s.exit_code) == (3, 2, 1, 3)
    assert _DyingPool.created == 2  # b_ok and c_ok went on in a fresh pool
    (dead,) = s.failures
    assert dead.relative_path == "a_dies.pt" and dead.error_type == "BrokenProcessPool" and "died" in dead.reason
    err = json.loads((root / "ncbounds-results" / f"a_dies.pt{ERROR_SUFFIX}").read_text())
    assert err["error"]["type"] == "BrokenProcessPool"
    assert sorted(_records(root / "ncbounds-results")) == ["b_ok.pt", "c_ok.pt"]


# ---------------------------------------------------------------------------------------------
# the batch results as the paper-facing CSV


def _csv_frame(out: Path):
    import io

    import pandas as pd

    from ncbounds.report.export import export
    from ncbounds.report.results import load_records

    frame = pd.read_csv(io.StringIO(export(load_records(out), "csv")))
    return frame.drop(columns=[c for c in frame.columns if c in ("created",)])


def test_batch_csv_has_one_row_per_checkpoint_and_every_column(reference):
    frame = _csv_frame(reference["out"])
    assert len(frame) == len(LAYOUT) >= 12  # the corrupt checkpoint has an error record, not a row
    assert frame["checkpoint"].is_unique
    for column in ("checkpoint", "sha256", "format", "arch", "data", "train_error", "train_error.lo", "train_error.hi",
                   "test_error", "test_error.lo", "test_error.hi", "gap", "train.nc1", "test.nc1", "test.cdnv",
                   "test.nc4_mismatch", "test.margin_p10"):
        assert column in frame.columns, column
    hp = [c for c in frame.columns if c.startswith("hp.")]
    assert "hp.epoch" in hp and "hp.lr" in hp
    if BOUNDS != "none":
        for name in BOUNDS.split(","):
            assert f"bound.{name}" in frame.columns and f"bound.{name}.status" in frame.columns


def test_sigkill_resume_gives_exactly_the_uninterrupted_csv(tree, reference, child_env, tmp_path):
    out = tmp_path / "killed_csv"
    args = ["batch", str(tree), "--out", str(out), "--bounds", BOUNDS, "--device", "cpu", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-c", _CLI, *args], env=child_env, cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    try:
        while len([p for p in out.glob("*.json") if not p.name.endswith(ERROR_SUFFIX)]) < 3:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    code, _ = _invoke("batch", tree, "--out", out, "--bounds", BOUNDS, "--device", "cpu", "--quiet", "--resume")
    assert code == 3
    got, want = _csv_frame(out), _csv_frame(reference["out"])
    timing = [c for c in want.columns if c.startswith("timings")]
    import pandas as pd

    pd.testing.assert_frame_equal(got.drop(columns=timing), want.drop(columns=timing))  # 0 lost, 0 duplicated rows


def test_ctrl_c_exits_130_and_says_how_to_continue(tree, reference, child_env, tmp_path):
    """Before: Ctrl-C printed click's 'Aborted!' with exit code 1 and no word on what was kept."""
    out = tmp_path / "interrupted"
    slow = ["--bounds", "pacbayes_gauss", "--mc-samples", "30"]  # ~0.5 s per checkpoint: the signal lands mid-batch
    args = ["batch", str(tree), "--out", str(out), *slow, "--device", "cpu", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-c", _CLI, *args], env=child_env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while len([p for p in out.glob("*.json") if not p.name.endswith(ERROR_SUFFIX)]) < 2:
        assert proc.poll() is None, f"batch ended before it could be interrupted: {proc.stderr.read().decode()}"
        assert time.monotonic() < deadline, "no records appeared"
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=60)[1].decode()
    assert proc.returncode == 130, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("interrupted: ") and "--resume" in line and f"of {len(ALL)} checkpoints finished" in line, stderr
    assert "Traceback" not in stderr
    kept = len([p for p in out.glob("*.json") if not p.name.endswith(ERROR_SUFFIX)])
    code, stderr = _invoke("batch", tree, "--out", out, *slow, "--device", "cpu", "--quiet", "--resume")
    assert code == 3 and f"{kept} skipped" in stderr.strip().splitlines()[-1]
    assert sorted(_records(out)) == sorted(_records(reference["out"]))
