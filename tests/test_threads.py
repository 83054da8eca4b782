"""Thread counts that never oversubscribe: affinity and cgroup quota, divided among jobs; passive OpenMP waits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from ncbounds.pipeline import EvalOptions, evaluate
from ncbounds.threads import available_cores, cgroup_cpu_limit, default_threads, use_threads

REPO = Path(__file__).resolve().parents[1]
FEATURES = f"features:{REPO / 'data' / 'example_features.npz'}"


def test_cgroup_quota_v2_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpu_limit(v1) == 0.5
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert cgroup_cpu_limit(v1) is None


def test_default_threads_divide_the_available_cores(monkeypatch):
    import ncbounds.threads as threads

    assert 1 <= available_cores() <= len(os.sched_getaffinity(0))
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda root="/sys/fs/cgroup": 2.5)
    assert threads.available_cores() == 3  # quota 2.5 cores, rounded up
    assert threads.default_threads(1) == 3 and threads.default_threads(2) == 1 and threads.default_threads(5) == 1


def test_use_threads_restores_the_count():
    before = torch.get_num_threads()
    with use_threads(1) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before


def test_wait_policy_is_set_only_when_unset_and_before_torch():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(REPO)
    probe = "import os, {first}; import ncbounds; print(os.environ.get('OMP_WAIT_POLICY'))"
    run = lambda code, extra=None: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,  # noqa: E731
                                                  env={**env, **(extra or {})}, cwd=REPO, timeout=120).stdout.strip()
    assert run(probe.format(first="sys")) == "PASSIVE"
    assert run(probe.format(first="sys"), {"OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"  # the user's choice stays
    assert run(probe.format(first="torch")) == "None"  # too late once torch is loaded: left alone


def test_records_say_how_many_threads(tmp_path):
    rec = evaluate(None, data=FEATURES, bounds="none", threads=1)
    assert rec.provenance["threads"] == 1
    assert evaluate(None, data=FEATURES, bounds="none").provenance["threads"] == default_threads(1)
    assert EvalOptions(threads=4).identity([]) == EvalOptions().identity([])  # never part of the identity
