"""Shards (`ncbounds batch --shard i/N`, SLURM arrays) and `ncbounds merge` (DESIGN §9).

Uses the folder of 13 checkpoints of ``test_batch.py`` (12 tiny MLPs and a corrupt file) and its
uninterrupted reference run. Checked: ``--shard`` parsing and the SLURM variables (0- and 1-based
arrays, steps, uneven id lists refused); shards 0..N−1 partition the checkpoints, and a
checkpoint's shard depends only on its relative path; shard runs into separate folders and into
one folder each cover every checkpoint exactly once, and merging the separate folders gives the
reference run's folder (same files, same numbers), which ``--resume`` then accepts; the locks let
different shards share a folder and nothing else; merge keeps identical duplicates once, reports
conflicts and name clashes, drops error records superseded by a success, ignores non-records, and
is idempotent.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_batch as _batch_tests  # noqa: E402 - shared fixtures and helpers of the batch tests
from test_batch import ALL, BOUNDS, CORRUPT, _invoke, _numbers, _records  # noqa: E402

from ncbounds.batch import (  # noqa: E402
    ERROR_SUFFIX,
    find_checkpoints,
    merge_results,
    parse_shard,
    run_batch,
    select_shard,
    shard_from_env,
    shard_of,
)
from ncbounds.batch import (
    locked as _locked,
)
from ncbounds.errors import NCBoundsError, UsageError  # noqa: E402
from ncbounds.pipeline import EvalOptions  # noqa: E402

OPTS = EvalOptions(bounds=BOUNDS, device="cpu")

# the batch tests' module fixtures, instantiated anew for this module
child_env = _batch_tests.child_env  # autouse: PYTHONPATH, one torch thread
tree = _batch_tests.tree  # the folder of 13 checkpoints
reference = _batch_tests.reference  # its uninterrupted `ncbounds batch` run


def _files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if not p.name.startswith("."))


# ---------------------------------------------------------------------------------------------
# parsing


def test_parse_shard():
    assert parse_shard("0/1") == (0, 1)
    assert parse_shard("2/8") == (2, 8)
    assert parse_shard(" 7 / 8 ") == (7, 8)
    for bad in ("8/8", "1/0", "-1/4", "a/b", "3", "1/2/3", ""):
        with pytest.raises(UsageError, match="i/N|0-based"):
            parse_shard(bad)


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),  # not an array job
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_JOB_ID": "99"}, None),  # COUNT missing: not treated as an array
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0"}, (0, 4)),  # --array=0-3
    ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "4"}, (3, 4)),
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}, (0, 4)),  # --array=1-4
    ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}, (2, 4)),  # no MIN: the id itself, 0-based
    ({"SLURM_ARRAY_TASK_ID": "14", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "0",
      "SLURM_ARRAY_TASK_MAX": "14", "SLURM_ARRAY_TASK_STEP": "2"}, (7, 8)),  # --array=0-14:2
])
def test_shard_from_slurm_environment(env, expected):
    assert shard_from_env(env) == expected


@pytest.mark.parametrize("env", [
    {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4"},  # 1-based ids without MIN
    {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "9"},  # 1,4,9
    {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "9"},
    {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "3"},
    {"SLURM_ARRAY_TASK_COUNT": "3"},
])
def test_uneven_or_broken_slurm_arrays_are_refused(env):
    with pytest.raises(UsageError, match="--shard"):
        shard_from_env(env)


# ---------------------------------------------------------------------------------------------
# selection


def test_shards_partition_and_depend_only_on_the_relative_path(tree, tmp_path):
    found = find_checkpoints(tree)
    for count in (1, 2, 3, 5, 13):
        parts = [select_shard(found, tree, (i, count)) for i in range(count)]
        flat = [p for part in parts for p in part]
        assert sorted(flat) == sorted(found) and len(flat) == len(set(flat)), count  # each exactly once
        assert all(part == sorted(part, key=found.index) for part in parts)  # order kept
    assert select_shard(found, tree, None) == found
    # stable: the shard of a file does not change when other files come or go, or under another root
    rels = [p.relative_to(tree).as_posix() for p in found]
    before = {r: shard_of(r, 4) for r in rels}
    fewer = select_shard(found[::2], tree, (1, 4))
    assert [p.relative_to(tree).as_posix() for p in fewer] == [r for r in rels[::2] if before[r] == 1]
    moved = [tmp_path / "elsewhere" / r for r in rels]
    assert {p.relative_to(tmp_path / "elsewhere").as_posix(): shard_of(p.relative_to(tmp_path / "elsewhere").as_posix(), 4)
            for p in moved} == before


# ---------------------------------------------------------------------------------------------
# shard runs and merge


def test_shard_runs_cover_every_checkpoint_once_and_merge_equals_one_run(tree, reference, tmp_path, monkeypatch):
    ref_out = reference["out"]
    # shard 0 through --shard, shard 1 through a 1-based SLURM array (--array=1-3), shard 2 through the API
    code0, err0 = _invoke("batch", tree, "--out", tmp_path / "s0", "--bounds", BOUNDS, "--device", "cpu", "--quiet", "--shard", "0/3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MAX", "3")
    code1, err1 = _invoke("batch", tree, "--out", tmp_path / "s1", "--bounds", BOUNDS, "--device", "cpu", "--quiet")
    monkeypatch.delenv("SLURM_ARRAY_TASK_COUNT")
    s2 = run_batch(tree, tmp_path / "s2", OPTS, progress=False, shard=(2, 3))
    assert "shard 1/3 from SLURM_ARRAY_TASK_ID" in err1
    lines = [err0.strip().splitlines()[-1], err1.strip().splitlines()[-1], s2.line()]
    assert all(f"of {len(ALL)} checkpoints" in line for line in lines), lines
    assert lines[0].startswith("batch: shard 0/3: ") and lines[1].startswith("batch: shard 1/3: ")

    per_shard = [_files(tmp_path / f"s{i}") for i in range(3)]
    flat = [name for files in per_shard for name in files]
    assert sorted(flat) == _files(ref_out) and len(flat) == len(set(flat))  # every checkpoint exactly once
    corrupt_shard = shard_of(CORRUPT, 3)
    assert f"{CORRUPT}{ERROR_SUFFIX}" in per_shard[corrupt_shard]
    assert [code0, code1, s2.exit_code] == [3 if i == corrupt_shard else 0 for i in range(3)]  # exit 3 where it failed

    code, stderr = _invoke("merge", tmp_path / "merged", tmp_path / "s0", tmp_path / "s1", tmp_path / "s2")
    assert code == 0, stderr
    summary = stderr.strip().splitlines()[-1]
    assert summary.startswith(f"merge: 3 folders into {tmp_path / 'merged'}: 12 records, 1 error records (13 copied"), summary
    assert _files(tmp_path / "merged") == _files(ref_out)
    ref, merged = _records(ref_out), _records(tmp_path / "merged")
    for name in ref:
        assert _numbers(merged[name]) == _numbers(ref[name]), name
        assert merged[name]["batch"] == json.loads((tmp_path / f"s{shard_of(ref[name]['batch']['relative_path'], 3)}" / f"{name}.json")
                                                   .read_text())["batch"]
    assert not list((tmp_path / "merged").glob(".*.tmp"))

    again = run_batch(tree, tmp_path / "merged", OPTS, progress=False, resume=True)  # a merged folder resumes like any
    assert (again.skipped, again.done, again.failed) == (12, 0, 1)

    for i in range(3):  # all shards into one folder
        run_batch(tree, tmp_path / "same", OPTS, progress=False, shard=(i, 3))
    assert _files(tmp_path / "same") == _files(ref_out)


def test_locks_let_different_shards_share_a_folder_and_nothing_else(tmp_path):
    with _locked(tmp_path, (0, 2)):
        with _locked(tmp_path, (1, 2)):
            pass  # another shard: fine
        with pytest.raises(NCBoundsError, match="shard 0/2 is already being evaluated"):
            with _locked(tmp_path, (0, 2)):
                pass
        with pytest.raises(NCBoundsError, match="another"):
            with _locked(tmp_path):
                pass
    with _locked(tmp_path):
        with pytest.raises(NCBoundsError, match="another"):
            with _locked(tmp_path, (1, 2)):
                pass


def test_sharded_run_keeps_other_shards_temporaries(tree, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    names = {p: p.relative_to(tree).as_posix().replace("/", "__") for p in find_checkpoints(tree)}
    mine = next(n for p, n in names.items() if shard_of(p.relative_to(tree).as_posix(), 2) == 0)
    theirs = next(n for p, n in names.items() if shard_of(p.relative_to(tree).as_posix(), 2) == 1)
    (out / f".{mine}.json.1.aaaaaaaa.tmp").write_text("{")
    (out / f".{theirs}.json.2.bbbbbbbb.tmp").write_text("{")  # another shard may be writing it right now
    run_batch(tree, out, EvalOptions(bounds="none", device="cpu"), progress=False, shard=(0, 2))
    assert [p.name for p in out.glob(".*.tmp")] == [f".{theirs}.json.2.bbbbbbbb.tmp"]


# ---------------------------------------------------------------------------------------------
# merge: duplicates, conflicts, clashes


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def test_merge_duplicates_conflicts_clashes_and_superseded_errors(reference, tmp_path):
    ref_out = reference["out"]
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    shutil.copytree(ref_out, a)
    shutil.copytree(ref_out, b)
    c.mkdir()
    later = "2999-01-01T00:00:00+00:00"

    def newer_and_other_numbers(data):
        data["batch"]["created"] = later
        data["errors"]["test"]["errors"] += 1

    _edit(b / "top_a.pt.json", newer_and_other_numbers)  # same identity, other numbers: a conflict, newest kept
    _edit(b / "top_b.pth.json", lambda d: (d["batch"].update(created=later), d["timings"].update(total=99.0)))  # a duplicate
    record = json.loads((a / "top_c.bin.json").read_text())
    (c / f"top_c.bin{ERROR_SUFFIX}").write_text(json.dumps({  # same identity as a success: superseded
        "checkpoint": record["checkpoint"], "error": {"reason": "x.", "type": "RuntimeError", "exit_code": 1, "traceback": None},
        "batch": {**record["batch"], "created": later}}))

    def other_weights(data):
        data["batch"]["checkpoint_sha256"] = data["checkpoint"]["sha256"] = "0" * 64
        data["batch"]["created"] = later

    shutil.copy(a / "run_a__epoch_01.pt.json", c / "run_a__epoch_01.pt.json")
    _edit(c / "run_a__epoch_01.pt.json", other_weights)  # same name, other checkpoint contents: a clash, both kept
    (c / "notes.json").write_text(json.dumps({"not": "a record"}))  # ignored
    (c / "broken.json").write_text("{")  # ignored

    out = tmp_path / "out"
    code, stderr = _invoke("merge", out, a, b, c)
    assert code == 0, stderr
    lines = stderr.strip().splitlines()
    assert any(line.startswith("conflict: top_a.pt: 2 different results") for line in lines), stderr
    clash = [line for line in lines if line.startswith("clash: run_a__epoch_01.pt: 2 results")]
    assert len(clash) == 1 and str(a / "run_a__epoch_01.pt.json") in clash[0] and str(c / "run_a__epoch_01.pt.json") in clash[0], stderr
    assert sum(line.startswith("ignored: ") for line in lines) == 2
    summary = lines[-1]
    assert "13 records, 1 error records" in summary and "1 conflicts" in summary and "1 name clashes" in summary, summary
    assert "1 error records superseded by a success" in summary and "2 files ignored" in summary, summary
    # 13 names in a and b: top_a conflicts, the other 12 are identical pairs
    assert "12 identical duplicates" in summary, summary

    renamed = [p.name for p in out.glob("run_a__epoch_01.pt~*.json")]
    assert len(renamed) == 1  # the clash keeps both records, the second under a disambiguated name
    assert _files(out) == sorted([*_files(ref_out), renamed[0]])  # the error record of top_c dropped
    merged = _records(out)
    assert merged["top_a.pt"]["batch"]["created"] == later  # the newest of the conflicting pair
    assert merged["run_a__epoch_01.pt"]["checkpoint"]["sha256"] != "0" * 64  # the first folder's keeps the plain name
    assert merged[renamed[0][: -len(".json")]]["checkpoint"]["sha256"] == "0" * 64  # the other checkpoint, kept too
    assert merged["top_b.pth"]["batch"]["created"] != later  # identical duplicate: the first folder's copy
    assert (out / f"{CORRUPT}{ERROR_SUFFIX}").is_file()

    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, stderr = _invoke("merge", out, a, b, c, out)  # again, OUT among the sources: nothing changes
    assert code == 0, stderr
    assert "(0 copied, 14 already there, 0 removed)" in stderr.strip().splitlines()[-1], stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_merge_replaces_an_error_in_out_by_a_later_success(reference, tmp_path):
    out, fixed = tmp_path / "out", tmp_path / "fixed"
    shutil.copytree(reference["out"], out)
    fixed.mkdir()
    record = json.loads((out / "top_a.pt.json").read_text())
    (out / "top_a.pt.json").unlink()
    (out / f"top_a.pt{ERROR_SUFFIX}").write_text(json.dumps({
        "checkpoint": record["checkpoint"], "error": {"reason": "x.", "type": "RuntimeError", "exit_code": 1, "traceback": None},
        "batch": record["batch"]}))
    (fixed / "top_a.pt.json").write_text(json.dumps(record))
    summary = merge_results(out, [fixed])
    assert (summary.superseded, summary.copied, summary.removed) == (1, 1, 1)
    assert not (out / f"top_a.pt{ERROR_SUFFIX}").exists() and (out / "top_a.pt.json").is_file()


def test_merge_usage_errors(tmp_path):
    code, stderr = _invoke("merge", tmp_path / "out")
    assert code == 2  # no RESULTS: click's usage message
    code, stderr = _invoke("merge", tmp_path / "out", tmp_path / "missing")
    assert code == 2 and "Traceback" not in stderr
    with pytest.raises(UsageError):
        merge_results(tmp_path / "out", [])
