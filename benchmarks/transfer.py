"""Cost of the transfer evaluation on cached features (the target's one forward pass per split excluded).

Usage:  python benchmarks/transfer.py [--n 10000] [--d 512] [--classes 10,100] [--repeats 3]

Synthetic target features (N × d float32, K balanced Gaussian classes, N/2 for training and N/2 for
test — except the few-shot rows, which use all N as the test split, the figure the README quotes):

* ``fewshot``: :func:`ncbounds.transfer.fewshot.fewshot_table` — 600 episodes × 3 shot settings (1, 5, 10;
  15 queries per class) for 5-way and for all-way episodes, on N × d cached features;
* ``layer``: :func:`ncbounds.transfer.layer.layer_transfer` — everything one layer costs: NCC, the
  scikit-learn probe, 600 × 3 × (all-way, 5-way) episodes and every score.

Minimum over ``--repeats`` runs, one thread per BLAS call pool as configured by the environment.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ncbounds.transfer.fewshot import fewshot_table  # noqa: E402
from ncbounds.transfer.layer import layer_transfer  # noqa: E402


def features(n: int, d: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n // k)
    x = (rng.normal(size=(k, d)) * 2.0)[y] + rng.normal(size=(len(y), d))
    perm = rng.permutation(len(y))
    return x[perm].astype(np.float32), y[perm]


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--classes", default="10,100")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"N = {args.n}, d = {args.d}, 600 episodes per setting, shots 1/5/10, 15 queries")
    for k in (int(c) for c in args.classes.split(",")):
        x, y = features(args.n, args.d, k)
        for ways in (5, "all"):
            t = best(lambda w=ways, x=x, y=y: fewshot_table(x, y, ways=(w,), shots=(1, 5, 10)), args.repeats)
            print(f"K = {k:4d}  fewshot {str(ways):>3}-way × 3 shot settings: {t:7.2f} s")
        half = len(y) // 2
        t = best(lambda x=x, y=y, h=half: layer_transfer(x[:h], y[:h], x[h:], y[h:]), 1)
        print(f"K = {k:4d}  one layer (NCC, probe, 2×3 few-shot settings, scores), N/2 train + N/2 test: {t:7.2f} s")


if __name__ == "__main__":
    main()
