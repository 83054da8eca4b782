"""Small-model overhead of `ncbounds report` over a plain forward pass (issue 14, part 2).

Usage:  OMP_NUM_THREADS=1 python benchmarks/overhead.py [--repeats 7] [--only mlp|cnn] [--json FILE]

Workload: MNIST-1D, 4,000 training + 10,000 test samples, batch 1,000, CPU, one torch thread;

* MLP ``mlp:input_dim=40,num_classes=10,width=256,depth=3``: penultimate + ``bounds="none"``,
  penultimate + ``bounds="default"``, ``layers="all"`` + ``bounds="default"``;
* 1-D CNN ``cnn1d:channels=64``: penultimate + ``bounds="none"``, penultimate + ``bounds="default"``.

Both models are trained briefly (a few hundred Adam steps on the training split, fixed seed) so the
statistics look like those of a real checkpoint. Each repeat runs every setting once, in an order that
rotates from repeat to repeat (interleaved), and each report run is paired with a plain logits-only
forward pass of the same batches under ``torch.inference_mode`` run right before it; the figure is the
**median of the paired ratios** report / forward (the minimum beside it). Two ratios are printed:

* ``ratio`` — the report without checkpoint and data loading: ``timings.total − timings.load``
  (the data of the built-in generator is cached in-process, the checkpoint is read each time);
* ``ratio+load`` — the wall time of the whole ``run_evaluation`` call, loading included.

The report time is split into ``passes`` (``pass_train + pass_test``: forward, statistics, spill and
replay) and ``fixed`` (``total − load − passes``: metrics, record, bounds — a per-checkpoint cost
independent of N), both as multiples of the paired forward time.

Measured on the 2-core development machine (7 repeats, medians of ``ratio`` [min]; two runs each,
before = the code before the small-model work, after = with it):

=========================  ======  =========================  =========================
setting                    target  before                     after
=========================  ======  =========================  =========================
mlp penultimate/none       1.50    2.89 [2.77], 3.03 [2.93]   2.23 [2.16], 2.26 [2.21]
mlp penultimate/default    2.50    6.38 [6.24], 6.59 [6.22]   4.15 [4.01], 4.26 [4.08]
mlp all/default            3.00    10.05 [9.66], 9.95 [9.56]  6.33 [5.33], 6.91 [6.46]
cnn penultimate/none       1.10    1.18 [1.05], 1.14 [1.10]   1.10 [1.06], 1.11 [1.03]
cnn penultimate/default    1.25    1.52 [1.41], 1.34 [1.09]   1.30 [1.28], 1.33 [1.27]
=========================  ======  =========================  =========================

(MLP forward ≈ 39 ms, CNN forward 220–340 ms depending on the machine's load.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from ncbounds.io.datasets import iterate_batches, load_data  # noqa: E402
from ncbounds.models import build_model  # noqa: E402
from ncbounds.pipeline import run_evaluation  # noqa: E402

DATA = "mnist1d:n=14000,train_split=0.2857142857142857"
BATCH = 1000
MODELS = {
    "mlp": "mlp:input_dim=40,num_classes=10,width=256,depth=3",
    "cnn": "cnn1d:channels=64",
}
#: (model, layers, bounds, target ratio)
SETTINGS = [
    ("mlp", None, "none", 1.5),
    ("mlp", None, "default", 2.5),
    ("mlp", "all", "default", 3.0),
    ("cnn", None, "none", 1.10),
    ("cnn", None, "default", 1.25),
]


def train_checkpoint(arch: str, data, path: str, steps: int = 300) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(arch)
    x, y = torch.as_tensor(data.train.x), torch.as_tensor(data.train.y)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (256,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()
    torch.save(model.state_dict(), path)
    return model


def forward_time(model, data) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for split in (data.train, data.test):
            for xb, _ in iterate_batches(split, BATCH):
                model(xb)
    return time.perf_counter() - start


def report_time(ckpt: str, arch: str, layers, bounds) -> dict:
    start = time.perf_counter()
    run = run_evaluation(ckpt, arch=arch, data=DATA, device="cpu", batch_size=BATCH, threads=1, layers=layers,
                         bounds=bounds, progress=False)
    wall = time.perf_counter() - start
    t = run.record.timings
    passes = t["pass_train"] + t["pass_test"]
    report = t["total"] - t["load"]
    return {"wall": wall, "report": report, "passes": passes, "fixed": report - passes, "load": t["load"]}


def floor_ratio(model, data, repeats: int) -> tuple[float, float]:
    """The least any float64 two-pass statistic can cost on the MLP: the forward pass plus, per batch of
    penultimate features, one float64 conversion, class sums, deviations from (given) class means,
    their squared norms and one product with a d×29 matrix (span coordinates and projections) — written
    here by hand, without ncbounds. Returns (forward s, forward + floor s), minima over ``repeats``."""
    body, head = model.features, model.fc
    K, d = head.out_features, head.in_features
    means = torch.randn(K, d, dtype=torch.float64)
    rhs = torch.randn(d, 29, dtype=torch.float64)

    def minimal() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for split in (data.train, data.test):
                for xb, yb in iterate_batches(split, BATCH):
                    h = body(xb.flatten(1))
                    head(h)
                    h64 = h.to(torch.float64)
                    torch.zeros(K, d, dtype=torch.float64).index_add_(0, yb, h64)
                    dev = h64 - means[yb]
                    dev.square().sum(1)
                    dev @ rhs
        return time.perf_counter() - start

    minimal()
    return min(forward_time(model, data) for _ in range(repeats)), min(minimal() for _ in range(repeats))


def covariance_time(model, data, repeats: int) -> float:
    """Seconds ncbounds' per-class second moments (:class:`PairMoments`, the d×d covariance of every class
    that ``nc_cantelli`` needs, float64, symmetric blocks) take over the test split's penultimate
    features — given the features and the class means, i.e. without the forward pass (minimum of ``repeats``)."""
    from ncbounds.bounds.replay.pair_moments import PairMoments
    from ncbounds.stats.accumulator import ReplayBatch

    with torch.inference_mode():
        batches = [(model.features(xb.flatten(1)).to(torch.float64), yb) for xb, yb in iterate_batches(data.test, BATCH)]
    h = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    means = torch.stack([h[y == c].mean(0) for c in range(model.fc.out_features)])

    def once() -> float:
        moments = PairMoments(means)
        start = time.perf_counter()
        for hb, yb in batches:
            moments.update_batch(ReplayBatch(hb, yb, means))
        return time.perf_counter() - start

    once()
    return min(once() for _ in range(repeats))


def label(setting) -> str:
    model, layers, bounds, _ = setting
    return f"{model} {layers or 'penultimate'}/{bounds}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--only", choices=sorted(MODELS), help="one model only")
    ap.add_argument("--json", help="write the per-repeat figures to this file")
    ap.add_argument("--floor", action="store_true",
                    help="only time the MLP's forward pass against forward + the minimal float64 statistics")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.floor:
        data = load_data(DATA)
        with tempfile.TemporaryDirectory() as work:
            model = train_checkpoint(MODELS["mlp"], data, os.path.join(work, "mlp.pt"))
        fwd, low = floor_ratio(model, data, args.repeats)
        print(f"MLP forward {1e3 * fwd:.1f} ms; forward + minimal float64 statistics {1e3 * low:.1f} ms; "
              f"ratio {low / fwd:.2f} (minima of {args.repeats})")
        cov = covariance_time(model, data, args.repeats)
        print(f"per-class covariances of the test split (nc_cantelli, default bounds): {1e3 * cov:.1f} ms = "
              f"{cov / fwd:.2f} forward passes")
        return
    settings = [s for s in SETTINGS if args.only in (None, s[0])]
    data = load_data(DATA)
    rows: dict[str, list[dict]] = {label(s): [] for s in settings}
    with tempfile.TemporaryDirectory() as work:
        ckpts, models = {}, {}
        for name in {s[0] for s in settings}:
            ckpts[name] = os.path.join(work, f"{name}.pt")
            models[name] = train_checkpoint(MODELS[name], data, ckpts[name])
        for s in settings:  # warm-up: allocator, kernels, lazy imports
            forward_time(models[s[0]], data)
            report_time(ckpts[s[0]], MODELS[s[0]], s[1], s[2])
        for rep in range(args.repeats):
            shift = rep % len(settings)
            for s in settings[shift:] + settings[:shift]:
                fwd = forward_time(models[s[0]], data)
                r = report_time(ckpts[s[0]], MODELS[s[0]], s[1], s[2])
                rows[label(s)].append({"forward": fwd, **r})
            print(f"repeat {rep + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    print(f"\nMNIST-1D 4,000 + 10,000, batch {BATCH}, cpu, torch threads {torch.get_num_threads()}, "
          f"{args.repeats} interleaved repeats; medians of paired ratios (min in brackets)")
    print("ratio = (total − load)/forward; ratio+load = whole run_evaluation wall time/forward; "
          "passes, fixed = parts of ratio")
    head = f"{'setting':<26}{'target':>7}{'fwd ms':>8}{'ratio':>15}{'ratio+load':>15}{'passes':>15}{'fixed':>15}{'fixed ms':>9}"
    print(head)
    summary = {}
    for s in settings:
        key = label(s)
        r = rows[key]

        def med_min(field, r=r):
            vals = [x[field] / x["forward"] for x in r]
            return statistics.median(vals), min(vals)

        ratio, ratio_min = med_min("report")
        wall, wall_min = med_min("wall")
        passes, passes_min = med_min("passes")
        fixed, fixed_min = med_min("fixed")
        fwd_ms = 1e3 * statistics.median(x["forward"] for x in r)
        fixed_ms = 1e3 * statistics.median(x["fixed"] for x in r)
        summary[key] = {"target": s[3], "ratio": ratio, "ratio_min": ratio_min, "ratio_with_load": wall,
                        "ratio_with_load_min": wall_min, "passes": passes, "fixed": fixed, "forward_ms": fwd_ms,
                        "fixed_ms": fixed_ms, "met": ratio <= s[3]}
        print(f"{key:<26}{s[3]:>7.2f}{fwd_ms:>8.1f}{ratio:>9.2f} [{ratio_min:.2f}]{wall:>9.2f} [{wall_min:.2f}]"
              f"{passes:>9.2f} [{passes_min:.2f}]{fixed:>9.2f} [{fixed_min:.2f}]{fixed_ms:>9.1f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"summary": summary, "runs": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
