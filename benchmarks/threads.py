"""Thread settings under load: the default vs --threads 1 and --threads 2 while other processes keep the cores busy.

Starts ``--load`` busy background processes (a pure-Python spin, one core each), then times, in fresh
processes with no OMP_* / MKL_* variable set (so the defaults of ncbounds apply):

* ``ncbounds report`` of one MLP checkpoint on MNIST-1D (``--report-n`` samples), default bounds;
* ``ncbounds batch`` of ``--checkpoints`` checkpoints with ``--jobs 1`` and ``--jobs 2``;

each with the default thread count, ``--threads 1`` and ``--threads 2``, interleaved over ``--repeats``
rounds (medians). Prints the ratio default / best of the two explicit settings (target ≤ 1.3) and stops
the background load at the end. Also ``--load 0`` to see the same on an idle machine.

    python benchmarks/threads.py [--load 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCH = "mlp:input_dim=40,num_classes=10,width=256,depth=3"
_SPIN = "while True:\n    pass\n"


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "KMP_", "OPENBLAS_NUM", "GOMP_"))}
    env["PYTHONPATH"] = str(REPO)
    return env


def _checkpoints(folder: Path, count: int, data: str) -> None:
    import torch

    from ncbounds.io.datasets import load_data
    from ncbounds.models import build_model

    src = load_data(data)
    x, y = torch.as_tensor(src.train.x), torch.as_tensor(src.train.y)
    (folder / "ncbounds.json").write_text(json.dumps({"arch": ARCH, "data": data}))
    for i in range(count):
        torch.manual_seed(i)
        model = build_model(ARCH)
        opt = torch.optim.Adam(model.parameters(), 3e-3)
        for _ in range(30 + 10 * i):
            idx = torch.randint(0, len(x), (256,))
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        torch.save(model.state_dict(), folder / f"epoch_{i:02d}.pt")
        (folder / f"epoch_{i:02d}.json").write_text(json.dumps({"epoch": i}))


def _time(args: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ncbounds", *args], env=env, capture_output=True, text=True)
    if done.returncode not in (0, 3):
        raise SystemExit(f"ncbounds {' '.join(args)} failed: {done.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--load", type=int, default=2, help="busy background processes (default 2)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--checkpoints", type=int, default=8)
    ap.add_argument("--report-n", type=int, default=4000, help="MNIST-1D samples (train 80 %%, test 20 %%)")
    args = ap.parse_args()
    env = _clean_env()
    data = f"mnist1d:n={args.report_n}"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "runs"
        folder.mkdir()
        _checkpoints(folder, args.checkpoints, data)
        one = str(folder / "epoch_00.pt")
        workloads = {
            "report": ["report", one, "--quiet", "--format", "json", "-o", str(Path(tmp) / "r.json")],
            "batch --jobs 1": ["batch", str(folder), "--out", str(Path(tmp) / "b1"), "--quiet", "--jobs", "1"],
            "batch --jobs 2": ["batch", str(folder), "--out", str(Path(tmp) / "b2"), "--quiet", "--jobs", "2"],
        }
        settings = {"default": [], "--threads 1": ["--threads", "1"], "--threads 2": ["--threads", "2"]}
        load = [subprocess.Popen([sys.executable, "-c", _SPIN]) for _ in range(args.load)]
        try:
            time.sleep(1.0)
            times: dict[tuple[str, str], list[float]] = {}
            for r in range(args.repeats):
                for work, wargs in workloads.items():
                    for name, sargs in settings.items():
                        times.setdefault((work, name), []).append(_time([*wargs, *sargs], env))
                print(f"round {r + 1}/{args.repeats} done", file=sys.stderr)
        finally:
            for p in load:
                p.kill()
    print(f"{args.load} busy background processes, {os.cpu_count()} cores, medians of {args.repeats} interleaved rounds")
    print(f"{'workload':<16} {'default':>9} {'--threads 1':>12} {'--threads 2':>12} {'default / best':>15}")
    for work in workloads:
        med = {name: statistics.median(times[(work, name)]) for name in settings}
        best = min(med["--threads 1"], med["--threads 2"])
        row = f"{med['default']:>8.2f}s {med['--threads 1']:>11.2f}s {med['--threads 2']:>11.2f}s"
        print(f"{work:<16} {row} {med['default'] / best:>15.2f}")


if __name__ == "__main__":
    main()
