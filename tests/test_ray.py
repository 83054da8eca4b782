"""Ray backend of `ncbounds batch` (DESIGN §9: the same numbers on the Ray backend as locally).

A real local Ray cluster is started for this module (``ray start --head --block`` on 127.0.0.1, a
free port, 2 CPUs, no dashboard, its own temporary folder and a random auth token) and stopped at
the end by signalling that one process. Checked:

* a batch of 6 tiny checkpoints (MLP width 16 on digits, as in ``test_batch.py``) with
  ``backend="ray"`` writes the same files as the local backend, value for value (layers, errors,
  bounds, layerwise, identity hashes, error reasons); a corrupt checkpoint (an ``NCBoundsError``)
  gets the same error record as locally, a model that raises an unexpected ``RuntimeError`` is run
  exactly twice (one retry) before its error record is written;
* a model that SIGKILLs its own worker is run exactly twice (Ray's ``max_retries=1``), then gets an
  error record naming the lost task, and the other checkpoint is evaluated;
* SIGKILL of the worker process running a task, from outside, while the batch (the CLI, connected
  with ``--address``) is running: the batch still ends, and after at most one ``--resume`` every
  record is present once and nothing is duplicated;
* a missing Ray is one line, exit 2; resource requests the cluster cannot meet are usage errors.

Skipped where Ray is not installed (CI installs ``.[test,ray]``, so they run there).
"""

from __future__ import annotations

import contextlib
import faulthandler
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_batch import (  # noqa: E402 - shared fixtures and helpers of the batch tests
    ARCH,
    BOUNDS,
    DATA,
    REPO,
    WRAPPERS,
    _invoke,
    _numbers,
    _records,
    _train,
    child_env,  # noqa: F401 - module fixture (autouse): PYTHONPATH, one torch thread
)

from ncbounds.batch import ERROR_SUFFIX, run_batch  # noqa: E402
from ncbounds.pipeline import EvalOptions  # noqa: E402

_CLI = "from ncbounds.cli.main import main; main(prog_name='ncbounds')"
TASK_TITLE = "ray::evaluate_checkpoint"  # process title of a Ray worker while it runs our task

_MODELS = '''\
import time
from pathlib import Path

from ncbounds.models.builtin import MLP


class Slow(MLP):
    """The built-in MLP (same state_dict keys), sleeping `delay` seconds per forward call."""

    def __init__(self, delay=0.0, **kwargs):
        super().__init__(**kwargs)
        self.delay = delay

    def forward(self, x):
        time.sleep(self.delay)
        return super().forward(x)


class Boom(MLP):
    """Raises an unexpected RuntimeError in forward, after appending a line to `counter`."""

    def __init__(self, counter="", **kwargs):
        super().__init__(**kwargs)
        self.counter = counter

    def forward(self, x):
        with open(self.counter, "a") as fh:
            fh.write("call\\n")
        raise RuntimeError("boom in forward")


class Crash(MLP):
    """Kills its own process in forward (as a segfault or the OOM killer would), after appending to `counter`."""

    def __init__(self, counter="", **kwargs):
        super().__init__(**kwargs)
        self.counter = counter

    def forward(self, x):
        import os
        import signal

        with open(self.counter, "a") as fh:
            fh.write("call\\n")
        os.kill(os.getpid(), signal.SIGKILL)
'''

MLP_KWARGS = {"input_dim": 64, "num_classes": 10, "width": 16, "depth": 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(child_env):  # noqa: F811 - the imported fixture
    """A local Ray cluster of 2 CPUs on 127.0.0.1 for this module: {address, pid, env}; stopped at the end.

    The cluster and every driver (this process, the CLI subprocesses) share a random token through
    ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN``; Ray reads them when it is first imported, so they
    are set before ``import ray`` here.
    """
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install 'ncbounds[ray]')")
    exe = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    temp = tempfile.mkdtemp(prefix="ncb-ray-", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    port = _free_port()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env = {**child_env, **auth, "RAY_USAGE_STATS_ENABLED": "0"}
    log_path = Path(temp) / "ray-start.log"
    with pytest.MonkeyPatch.context() as mp, open(log_path, "w") as log:
        for key, value in auth.items():
            mp.setenv(key, value)  # this process is a driver too
        already = "ray" in sys.modules
        import ray

        if already:  # imported before with other settings: make it read RAY_AUTH_* again (as ray.init does)
            with contextlib.suppress(Exception):
                from ray._private.authentication.authentication_token_setup import AuthenticationTokenLoader
                from ray._raylet import Config

                Config.initialize("")
                AuthenticationTokenLoader.instance().reset_cache()

        proc = subprocess.Popen(
            [exe, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
             "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", temp],
            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        address = f"127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:  # wait for the GCS port, then for both CPUs to be registered
                assert proc.poll() is None, f"ray start ended: {log_path.read_text()[-2000:]}"
                assert time.monotonic() < deadline, f"the Ray cluster did not come up in 120 s: {log_path.read_text()[-2000:]}"
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.2)
            # This process stays connected for the module: run_batch then uses that connection (and its
            # warm workers) instead of connecting anew; the CLI subprocesses connect through --address.
            faulthandler.dump_traceback_later(180, exit=True)  # ray.init retries forever on a bad token: fail, not hang
            try:
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            finally:
                faulthandler.cancel_dump_traceback_later()
            while ray.cluster_resources().get("CPU", 0) < 2:
                assert time.monotonic() < deadline, "the Ray cluster has no CPUs after 120 s"
                time.sleep(0.2)
            yield {"address": address, "pid": proc.pid, "env": env}
        finally:
            if ray.is_initialized():
                ray.shutdown()
            proc.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own process group (start_new_session)
                proc.wait()
            shutil.rmtree(temp, ignore_errors=True)


def _save_tree(root: Path, layout: dict, arch: str, kwargs: dict | None = None) -> None:
    """Checkpoints (relative path -> (wrapper, seed)) with per-file sidecars naming ``arch`` and digits."""
    for rel, (wrapper, seed) in layout.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(WRAPPERS[wrapper](_train(seed, steps=2, lr=0.1)), path)
        side = {"arch": arch, "data": DATA, "seed": seed, "wrapper": wrapper}
        if kwargs:
            side["arch_kwargs"] = kwargs
        path.with_suffix(".json").write_text(json.dumps(side))


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> dict:
    """4 good checkpoints, a truncated one (NCBoundsError) and one whose model raises RuntimeError."""
    root = tmp_path_factory.mktemp("ray-runs")
    (root / "models.py").write_text(_MODELS)
    _save_tree(root, {"a.pt": ("plain", 1), "b.pth": ("state_dict", 2), "sub/c.ckpt": ("lightning", 3),
                      "sub/d.pt": ("ddp", 4)}, ARCH)
    good = (root / "a.pt").read_bytes()
    (root / "corrupt.pt").write_bytes(good[: len(good) // 2])
    (root / "corrupt.json").write_text(json.dumps({"arch": ARCH, "data": DATA}))
    counter = root / "boom-calls.txt"
    _save_tree(root, {"boom.pt": ("plain", 5)}, "models.py:Boom", {**MLP_KWARGS, "counter": str(counter)})
    return {"root": root, "counter": counter}


def _files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if not p.name.startswith("."))


def test_ray_equals_local_value_for_value(ray_cluster, small_tree, tmp_path):
    root, counter = small_tree["root"], small_tree["counter"]
    opts = EvalOptions(bounds=BOUNDS, device="cpu", trust_code=True)  # the test's own models.py in the folder
    counter.unlink(missing_ok=True)
    local = run_batch(root, tmp_path / "local", opts, progress=False)
    assert counter.read_text().count("call") == 1
    counter.unlink()
    ray_summary = run_batch(root, tmp_path / "ray", opts, progress=False, backend="ray", address=ray_cluster["address"],
                            cpus_per_task=1)
    assert counter.read_text().count("call") == 2  # an unexpected exception is retried once, then recorded

    assert (ray_summary.total, ray_summary.done, ray_summary.failed, ray_summary.exit_code) == (6, 4, 2, 3)
    assert (local.done, local.failed) == (ray_summary.done, ray_summary.failed)
    assert _files(tmp_path / "ray") == _files(tmp_path / "local") == sorted(
        ["a.pt.json", "b.pth.json", "sub__c.ckpt.json", "sub__d.pt.json", f"corrupt.pt{ERROR_SUFFIX}", f"boom.pt{ERROR_SUFFIX}"])
    ref, got = _records(tmp_path / "local"), _records(tmp_path / "ray")
    for name in ref:
        assert _numbers(got[name]) == _numbers(ref[name]), name
        for key in ("checkpoint_sha256", "options_hash", "sidecar_hash", "relative_path", "root"):
            assert got[name]["batch"][key] == ref[name]["batch"][key], (name, key)
        assert got[name]["provenance"]["hyperparameters"] == ref[name]["provenance"]["hyperparameters"]
        assert got[name]["checkpoint"]["prefixes_stripped"] == ref[name]["checkpoint"]["prefixes_stripped"]
    for name in (f"corrupt.pt{ERROR_SUFFIX}", f"boom.pt{ERROR_SUFFIX}"):
        a, b = (json.loads((tmp_path / d / name).read_text()) for d in ("local", "ray"))
        assert {k: b["error"][k] for k in ("reason", "type", "exit_code")} == {k: a["error"][k] for k in ("reason", "type", "exit_code")}
        assert b["batch"]["options_hash"] == a["batch"]["options_hash"]
    boom = json.loads((tmp_path / "ray" / f"boom.pt{ERROR_SUFFIX}").read_text())["error"]
    assert boom["type"] == "RuntimeError" and "boom in forward" in boom["traceback"]
    assert json.loads((tmp_path / "ray" / f"corrupt.pt{ERROR_SUFFIX}").read_text())["error"]["type"] == "CheckpointError"
    assert not list((tmp_path / "ray").glob(".*.tmp"))



def test_a_task_that_kills_its_worker_is_retried_once_then_recorded(ray_cluster, tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    (root / "models.py").write_text(_MODELS)
    counter = tmp_path / "crash-calls.txt"
    _save_tree(root, {"ok.pt": ("plain", 7)}, ARCH)
    _save_tree(root, {"crash.pt": ("plain", 8)}, "models.py:Crash", {**MLP_KWARGS, "counter": str(counter)})
    summary = run_batch(root, tmp_path / "out", EvalOptions(bounds=BOUNDS, device="cpu", trust_code=True), progress=False,
                        backend="ray", address=ray_cluster["address"])
    assert (summary.done, summary.failed) == (1, 1)
    assert counter.read_text().count("call") == 2  # Ray's one retry (max_retries=1), then the error record
    (failure,) = summary.failures
    assert failure.relative_path == "crash.pt" and "lost twice" in failure.reason and failure.reason.endswith(".")
    err = json.loads((tmp_path / "out" / f"crash.pt{ERROR_SUFFIX}").read_text())
    assert err["error"]["type"] == failure.error_type and "Error" in failure.error_type
    assert err["batch"]["options_hash"] == summary.options_hash
    assert _files(tmp_path / "out") == ["crash.pt.error.json", "ok.pt.json"]


# ---------------------------------------------------------------------------------------------
# a worker killed mid-run


def _ancestors(pid: int) -> set[int]:
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return seen


def _ray_processes(cluster_pid: int) -> dict[int, str]:
    """This cluster's ``ray::…`` processes (workers and agents): pid → process title."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if title.startswith("ray::") and cluster_pid in _ancestors(int(entry.name)):
            found[int(entry.name)] = title
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the Ray worker processes through /proc")
def test_sigkill_of_a_worker_then_resume_loses_and_duplicates_nothing(ray_cluster, tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    (root / "models.py").write_text(_MODELS)
    layout = {f"epoch_{i}.pt": (w, 40 + i) for i, w in enumerate(["plain", "state_dict", "model", "net", "ddp", "compile"])}
    _save_tree(root, layout, "models.py:Slow", {**MLP_KWARGS, "delay": 0.12})  # ~1 s per checkpoint
    out = tmp_path / "out"
    args = ["batch", str(root), "--out", str(out), "--bounds", BOUNDS, "--device", "cpu", "--quiet", "--trust-code",
            "--backend", "ray", "--address", ray_cluster["address"]]
    proc = subprocess.Popen([sys.executable, "-c", _CLI, *args], env=ray_cluster["env"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    killed, titles = None, set()
    try:
        deadline = time.monotonic() + 90
        while killed is None:
            assert proc.poll() is None, f"the batch ended before a worker could be killed (Ray processes seen: {titles}): " \
                                        f"{proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, f"no worker running {TASK_TITLE} while some records existed ({titles})"
            records = [p for p in out.glob("*.json") if not p.name.endswith(ERROR_SUFFIX)] if out.is_dir() else []
            if 1 <= len(records) < len(layout):
                running = _ray_processes(ray_cluster["pid"])
                titles.update(running.values())
                workers = [pid for pid, title in running.items() if title.startswith(TASK_TITLE)]
                if workers:
                    killed = workers[0]
                    os.kill(killed, signal.SIGKILL)  # a Ray worker dies mid-task
                    break
            time.sleep(0.01)
        code = proc.wait(timeout=120)
        stderr = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()
    assert code in (0, 3), stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("batch: 6 checkpoints: "), stderr
    for p in out.glob("*.json"):
        json.loads(p.read_text())  # complete files only
    first_run = {p.name for p in out.glob("*.json") if not p.name.endswith(ERROR_SUFFIX)}
    if code == 3:  # the task was lost twice: an error record says so
        (err,) = out.glob(f"*{ERROR_SUFFIX}")
        assert "lost twice" in json.loads(err.read_text())["error"]["reason"]

    code, stderr = _invoke(*args[:-4], "--resume", "--backend", "ray", "--address", ray_cluster["address"])
    assert code == 0, stderr
    assert f"{len(first_run)} skipped" in stderr.strip().splitlines()[-1]
    expected = sorted(f"{name}.json" for name in layout)
    assert _files(out) == expected  # every record once, no error record left, nothing else
    assert not list(out.glob(".*.tmp"))
    for rec in _records(out).values():
        assert rec["errors"]["test"]["n"] > 0


# ---------------------------------------------------------------------------------------------
# usage errors


def test_missing_ray_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    code, stderr = _invoke("batch", tmp_path, "--backend", "ray", "--bounds", "none")
    assert code == 2
    assert stderr.strip().splitlines() == ["error: the ray backend needs `pip install 'ncbounds[ray]'`."]


def test_backend_option_errors(tmp_path):
    for args in (["--address", "auto"], ["--cpus-per-task", "2"], ["--gpus-per-task", "1"], ["--shard", "3/3"],
                 ["--shard", "x"]):
        code, stderr = _invoke("batch", tmp_path, "--bounds", "none", *args)
        assert code == 2, (args, stderr)
        assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr
    assert _invoke("batch", tmp_path, "--bounds", "none", "--backend", "dask")[0] == 2  # click's own usage message


def test_requests_the_cluster_cannot_meet_are_usage_errors(ray_cluster, small_tree):
    address = ray_cluster["address"]
    for args, words in ((["--cpus-per-task", "8"], "asks for 8 CPUs"), (["--gpus-per-task", "1"], "asks for 1 GPUs"),
                        (["--device", "cuda"], "--gpus-per-task")):
        code, stderr = _invoke("batch", small_tree["root"], "--bounds", "none", "--backend", "ray", "--address", address,
                               "--trust-code", "--out", small_tree["root"] / "unused", *args)
        assert code == 2, (args, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (args, stderr)
