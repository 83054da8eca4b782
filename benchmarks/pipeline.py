"""Overhead of `ncbounds report` over a plain forward pass, and peak memory at N and 10·N samples.

Usage:  python benchmarks/pipeline.py [--quick] [--layers all|none] [--bounds default|none] [--images N]
                                      [--device cpu|cuda]

By default the full report is measured: ``--layers all`` and ``--bounds default`` (every quantity
that is not Monte Carlo). For each model, the same batches (same batch size, same device) are run
(a) through the bare model under torch.inference_mode and (b) through ncbounds.evaluate (one pass
with statistics, logits, spill + replay, metrics and bounds; checkpoint/data loading excluded). Runs
alternate and the minimum of each is kept, so the ratio is taken within one run on a shared
machine. The report time is split into the two passes (forward + statistics, per sample) and the
metrics + bounds (a fixed cost per checkpoint, independent of N), so the ratio at another N can be
read off: ratio(N') ≈ passes/forward + fixed/(forward·N'/N). Peak memory is the maximum resident set
size of a fresh child process evaluating mnist1d with N and with 10·N samples.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from ncbounds.io.datasets import iterate_batches, load_data  # noqa: E402
from ncbounds.models import build_model  # noqa: E402
from ncbounds.pipeline import EvalOptions, evaluate  # noqa: E402


def forward_time(model, data, batch_size, device) -> float:
    model = model.to(device).eval()
    start = time.perf_counter()
    with torch.inference_mode():
        for split in (data.train, data.test):
            for xb, _ in iterate_batches(split, batch_size):
                model(xb.to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def report_time(ckpt, arch, data_spec, batch_size, device, layers, bounds) -> dict:
    rec = evaluate(ckpt, EvalOptions(arch=arch, data=data_spec, batch_size=batch_size, device=str(device), layers=layers, bounds=bounds))
    t = rec.timings
    passes = t["pass_train"] + t["pass_test"]
    return {"report": t["total"] - t["load"], "passes": passes, "fixed": t["total"] - t["load"] - passes}


def overhead(name, arch, data_spec, batch_size, device, layers, bounds, repeats, workdir, warmup=True):
    torch.manual_seed(0)
    model = build_model(arch)
    ckpt = os.path.join(workdir, name.replace("/", "_") + ".pt")
    torch.save(model.state_dict(), ckpt)
    data = load_data(data_spec)
    fwd, rep = [], []
    if warmup:
        report_time(ckpt, arch, data_spec, batch_size, device, layers, bounds)  # warm-up (allocator, kernels)
    for _ in range(repeats):
        fwd.append(forward_time(model, data, batch_size, device))
        rep.append(report_time(ckpt, arch, data_spec, batch_size, device, layers, bounds))
    n = len(data.train) + len(data.test)
    best = min(rep, key=lambda r: r["report"])
    return {"model": name, "n": n, "batch_size": batch_size, "layers": layers or "penultimate", "bounds": bounds,
            "forward_s": min(fwd), "report_s": best["report"], "passes_s": best["passes"], "fixed_s": best["fixed"],
            "ratio": best["report"] / min(fwd), "passes_ratio": best["passes"] / min(fwd)}


def peak_memory_child(n_samples: int, layers, bounds) -> float:
    code = (
        "import resource, sys, torch; sys.path.insert(0, %r)\n"
        "from ncbounds.models import build_model\n"
        "from ncbounds.pipeline import evaluate\n"
        "torch.manual_seed(0); m = build_model('mlp:input_dim=40,num_classes=10,width=256,depth=3')\n"
        "torch.save(m.state_dict(), %r)\n"
        "evaluate(%r, arch='mlp:input_dim=40,num_classes=10,width=256,depth=3', data='mnist1d:n=%d', layers=%r, bounds=%r, device='cpu')\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    tmp = tempfile.mkdtemp()
    ck = os.path.join(tmp, "m.pt")
    out = subprocess.run([sys.executable, "-c", code % (os.path.dirname(HERE), ck, ck, n_samples, layers, bounds)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and a smaller ResNet input set")
    ap.add_argument("--layers", default="all", help="layers hooked besides the penultimate one ('all', 'none', names)")
    ap.add_argument("--bounds", default="default", help="bounds evaluated ('default' = all but the Monte-Carlo ones, 'none')")
    ap.add_argument("--repeats", type=int, default=None, help="alternating forward/report runs per model (default 3; 2 with --quick)")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed first report (for large --images)")
    ap.add_argument("--images", type=int, default=None, help="random 32×32 images for the ResNet (default 2000; 500 with --quick)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--skip-mlp", action="store_true", help="(e.g. where mnist1d is not installed)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--json", help="write results to this file")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.layers == "none":
        args.layers = None
    repeats = args.repeats or (2 if args.quick else 3)
    results = []
    with tempfile.TemporaryDirectory() as work:
        if not args.skip_mlp:
            results.append(overhead("mlp/mnist1d", "mlp:input_dim=40,num_classes=10,width=512,depth=3", "mnist1d",
                                    256, device, args.layers, args.bounds, repeats, work, not args.no_warmup))
            print(json.dumps(results[-1]), flush=True)
        if not args.skip_resnet:
            n = args.images or (500 if args.quick else 2000)
            rng = np.random.default_rng(0)
            npz = os.path.join(work, "images.npz")
            n_test = n // 5
            np.savez(npz, x_train=rng.standard_normal((n - n_test, 3, 32, 32)).astype(np.float32),
                     y_train=rng.integers(0, 10, n - n_test), x_test=rng.standard_normal((n_test, 3, 32, 32)).astype(np.float32),
                     y_test=rng.integers(0, 10, n_test))
            results.append(overhead("resnet18-cifar/random32", "resnet18-cifar:num_classes=10", f"npz:{npz}",
                                    128, device, args.layers, args.bounds, args.repeats or max(1, repeats - 1), work,
                                    not args.no_warmup))
            print(json.dumps(results[-1]), flush=True)
    print(f"\nlayers={args.layers or 'penultimate'} bounds={args.bounds} device={args.device}")
    print(f"{'model':<26}{'n':>7}{'forward s':>11}{'report s':>10}{'ratio':>8}{'passes s':>10}{'passes/fwd':>11}{'fixed s':>9}")
    for r in results:
        print(f"{r['model']:<26}{r['n']:>7}{r['forward_s']:>11.3f}{r['report_s']:>10.3f}{r['ratio']:>8.3f}"
              f"{r['passes_s']:>10.3f}{r['passes_ratio']:>11.3f}{r['fixed_s']:>9.3f}")
    if not args.skip_memory:
        mem = {"N": 5000, "peak_mb_N": peak_memory_child(5000, args.layers, args.bounds),
               "peak_mb_10N": peak_memory_child(50000, args.layers, args.bounds)}
        mem["ratio_10N_over_N"] = mem["peak_mb_10N"] / mem["peak_mb_N"]
        results.append(mem)
        print(f"peak RSS mnist1d MLP: N={mem['N']}: {mem['peak_mb_N']:.0f} MB, 10·N: {mem['peak_mb_10N']:.0f} MB "
              f"(ratio {mem['ratio_10N_over_N']:.3f})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
