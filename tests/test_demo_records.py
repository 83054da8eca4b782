"""The demo's records stay what they were when the fixtures were written.

``data/fixtures/demo-records/`` holds two checkpoints of the demo sweep (width 64, epochs 1 and 8, with
the shared ``init.pt`` and the sidecars) and, under ``records/``, the batch records that ncbounds wrote
for them before the hardening and architecture changes (``--layers all``, default bounds, seed 0, CPU).
Evaluating the same checkpoints now must give the same record: every number equal to 1e-9 relative, every
string and flag identical, every key of the old record still present. New keys may appear (later versions
add fields); fields that describe the run rather than the checkpoint (paths, timings, creation times,
library versions, the batch identity hashes whose definition may change) are left out of the comparison.

Text that changed on purpose is listed in :data:`REWORDED` (old → new) and applied to the old record
before comparing: the architecture change removed citations of an internal design document from
bound references and reasons, and replaced the untyped ``options.extra`` by typed bound options.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from ncbounds.batch import run_batch
from ncbounds.pipeline import EvalOptions

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "demo-records"

#: (path of keys) prefixes that describe the run, not the checkpoint
VOLATILE = {
    ("timings",),
    ("provenance", "created"),
    ("provenance", "ncbounds"),
    ("provenance", "torch"),
    ("provenance", "numpy"),
    ("provenance", "python"),
    ("checkpoint", "path"),
    ("batch",),
    ("schema_version",),
}


#: deliberate rewordings of reference / reason texts, applied to the old record (every other string must be equal)
REWORDED = (
    ("explicit form of DESIGN §6 (Graf et al. 2022 code)", "explicit form of Graf et al.'s (2022) code"),
    ("is DESIGN §6's, from Graf et al.'s (2022) code", "is taken from Graf et al.'s (2022) code"),
    ("(pass options.extra['input_norm_bound'] for a certificate)",
     "(pass --bound-option neyshabur2018.input_norm_bound=B for a certificate)"),
    ("sample-split certificate from held-out features (DESIGN §6):", "sample-split certificate from held-out features:"),
    ("(DESIGN §6 predictors)", "(central-limit heuristic)"),
    ("DESIGN §5: NC1 = ", "Canonical: NC1 = "),
)

#: absolute paths: only their file name is compared
PATHS = {("options", "init")}


def _compare(old, new, path=()) -> list[str]:
    if path in VOLATILE:
        return []
    if path in PATHS and isinstance(old, str) and isinstance(new, str):
        old, new = Path(old).name, Path(new).name
    if isinstance(old, str):
        for before, after in REWORDED:
            old = old.replace(before, after)
    where = "/".join(map(str, path)) or "<record>"
    if isinstance(old, dict):
        if not isinstance(new, dict):
            return [f"{where}: was an object, now {type(new).__name__}"]
        problems = []
        for key, value in old.items():
            if key not in new:
                problems.append(f"{where}/{key}: missing now")
            else:
                problems += _compare(value, new[key], path + (key,))
        return problems
    if isinstance(old, list):
        if not isinstance(new, list) or len(new) != len(old):
            return [f"{where}: list changed ({old!r:.80} → {new!r:.80})"]
        return [p for i, (a, b) in enumerate(zip(old, new, strict=True)) for p in _compare(a, b, path + (i,))]
    if isinstance(old, float) or (isinstance(old, int) and not isinstance(old, bool) and isinstance(new, float)):
        if not isinstance(new, (int, float)) or isinstance(new, bool):
            return [f"{where}: {old!r} → {new!r}"]
        if not math.isclose(old, new, rel_tol=1e-9, abs_tol=1e-12):
            return [f"{where}: {old!r} → {new!r}"]
        return []
    return [] if old == new else [f"{where}: {old!r} → {new!r}"]


@pytest.fixture(scope="module")
def fresh_records(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-records")
    for item in FIXTURE.iterdir():
        if item.is_file():
            shutil.copy(item, root / item.name)
    out = root / "results"
    summary = run_batch(root, out, EvalOptions(layers="all", device="cpu", seed=0, bounds="default"), progress=False)
    assert summary.failed == 0, summary.failures
    return out


@pytest.mark.parametrize("name", ["epoch_01.pt.json", "epoch_08.pt.json"])
def test_demo_record_unchanged(fresh_records, name):
    old = json.loads((FIXTURE / "records" / name).read_text())
    new = json.loads((fresh_records / name).read_text())
    problems = _compare(old, new)
    assert not problems, "\n".join(problems[:40])


def test_comparison_detects_changes():
    old = json.loads((FIXTURE / "records" / "epoch_08.pt.json").read_text())
    changed = json.loads(json.dumps(old))
    changed["layers"]["penultimate"]["metrics"]["train"]["nc1"] *= 1 + 1e-6
    del changed["errors"]["test"]["ci95"]
    changed["bounds"][0]["status"] = "predictor"
    changed["timings"]["total"] = -1.0  # volatile: not compared
    problems = _compare(old, changed)
    assert any("metrics/train/nc1" in p for p in problems)
    assert any("errors/test/ci95: missing" in p for p in problems)
    assert any("bounds/0/status" in p for p in problems)
    assert not any("timings" in p for p in problems)
