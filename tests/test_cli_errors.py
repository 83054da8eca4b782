"""The command line on bad inputs (DESIGN §7 exit codes, §9 one clear sentence naming the fix).

Every bad input must end with exit code 1 (failure) or 2 (usage error) and exactly one line on
stderr that starts with ``error:`` — no traceback. Most cases run in-process with click's CliRunner
(stdout and stderr are captured separately; an uncaught exception fails the test); one test runs
the console-script entry point in a subprocess to check the real streams.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers_cli import run_cli
from helpers_models import (
    ARCH,
    TESTS_DIR,
    WritesMarker,
    digits_split,
    one_torch_thread,
    prefixed,
    save_as_if_on_gpu,
    trained_mlp,
    write_npz,
)

from ncbounds.models import build_model

REPO = os.path.dirname(TESTS_DIR)


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_torch_thread():
        yield



#: What the ``ncbounds`` console script runs (setup.cfg: ``ncbounds = ncbounds.cli.main:main``).
ENTRY_POINT = "import sys; from ncbounds.cli.main import main; sys.exit(main())"


def _env() -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # tiny model: avoid thread oversubscription on loaded CI cores
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, TESTS_DIR, env.get("PYTHONPATH")) if p)
    return env


def run_subprocess(*args: str) -> subprocess.CompletedProcess:
    """The console-script entry point in a fresh interpreter (real stdout / stderr)."""
    return subprocess.run([sys.executable, "-c", ENTRY_POINT, *map(str, args)], capture_output=True, text=True,
                          env=_env(), cwd=REPO, timeout=120)


def error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip("\n").splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got: {stderr!r}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model = trained_mlp()
    good = d / "good.pt"
    torch.save(model.state_dict(), good)
    data = good.read_bytes()
    (d / "half.pt").write_bytes(data[: len(data) // 2])
    (d / "noise.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    torch.manual_seed(0)
    torch.save(build_model("lenet5").state_dict(), d / "lenet.pt")
    nan = trained_mlp(steps=0)
    with torch.no_grad():
        nan.features[2].weight[0, 0] = float("nan")
    torch.save(nan.state_dict(), d / "nan.pt")
    xtr, ytr, xte, yte = digits_split()
    bad_y = yte.copy()
    bad_y[5] = 12
    write_npz(d / "labels12.npz", xtr, ytr, xte, bad_y)
    keep = yte != 7
    write_npz(d / "no7.npz", xtr, ytr, xte[keep], yte[keep])
    save_as_if_on_gpu({"model": prefixed(model.state_dict(), "module."), "epoch": 4}, d / "gpu_ddp.pt")
    return d


def test_missing_checkpoint(files):
    code, out, err = run_cli("report", files / "nope.pt", "--arch", ARCH, "--data", "digits")
    line = error_line(err)
    assert code == 1 and out == ""
    assert "nope.pt" in line and "does not exist" in line and "path" in line


def test_corrupt_checkpoint(files):
    code, out, err = run_cli("report", files / "noise.pt", "--arch", ARCH, "--data", "digits")
    line = error_line(err)
    assert code == 1 and out == ""
    assert "noise.pt" in line and "corrupt" in line and "re-save" in line


def test_truncated_checkpoint(files):
    code, out, err = run_cli("report", files / "half.pt", "--arch", ARCH, "--data", "digits")
    line = error_line(err)
    assert code == 1 and out == ""
    assert "half.pt" in line and "truncated" in line and "re-save" in line


def test_wrong_architecture_width(files):
    code, out, err = run_cli("report", files / "good.pt", "--arch", "mlp:input_dim=64,num_classes=10,width=16,depth=2",
                             "--data", "digits")
    line = error_line(err)
    assert code == 1 and out == ""
    assert "shape" in line and "(32, 64)" in line and "(16, 64)" in line and "--arch" in line


def test_key_mismatch(files):
    code, out, err = run_cli("report", files / "lenet.pt", "--arch", ARCH, "--data", "digits")
    line = error_line(err)
    assert code == 1 and out == ""
    assert "missing" in line and "features.0.weight" in line
    assert "unexpected" in line and "conv1.weight" in line and "--arch" in line


def test_labels_outside_head(files):
    code, out, err = run_cli("report", files / "good.pt", "--arch", ARCH, "--data", f"npz:{files / 'labels12.npz'}")
    line = error_line(err)
    assert code == 1 and out == ""
    assert "12" in line and "0..9" in line and "label" in line


def test_nan_weights(files):
    code, out, err = run_cli("report", files / "nan.pt", "--arch", ARCH, "--data", "digits")
    line = error_line(err)
    assert code == 1 and out == ""
    assert "NaN" in line and "weights" in line


def test_nan_features_message_names_the_layer(files):
    _, _, err = run_cli("report", files / "nan.pt", "--arch", ARCH, "--data", "digits")
    line = error_line(err)
    assert "NaN" in line and "features" in line
    assert any(name in line for name in ("penultimate", "fc", "features.2", "features.3")), line


def test_unknown_data_spec(files):
    code, out, err = run_cli("report", files / "good.pt", "--arch", ARCH, "--data", "nosuch")
    line = error_line(err)
    assert code == 2 and out == ""
    assert "nosuch" in line and "digits" in line  # names the known kinds


def test_unknown_arch_spec(files):
    code, out, err = run_cli("report", files / "good.pt", "--arch", "nosuch", "--data", "digits")
    line = error_line(err)
    assert code == 2 and out == ""
    assert "nosuch" in line and "mlp" in line  # names the built-ins


@pytest.mark.parametrize("command", ["report", "inspect"])
def test_malicious_pickle_not_executed(tmp_path, files, command):
    marker = tmp_path / "marker.txt"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": torch.load(files / "good.pt", weights_only=True), "note": WritesMarker(str(marker))}, evil)
    args = ["report", evil, "--arch", ARCH, "--data", "digits"] if command == "report" else ["inspect", evil]
    code, out, err = run_cli(*args)
    line = error_line(err)
    assert code == 1
    assert not marker.exists()
    assert "helpers_models._write_marker" in line and "--trust-checkpoint" in line
    if command == "inspect":
        assert "helpers_models._write_marker" in out  # the refused types are shown, nothing executed
    else:
        assert out == ""
        # with the explicit opt-in the payload really runs, so the absence above is meaningful
        code, out, _ = run_cli(*args, "--trust-checkpoint", "--quiet")
        assert code == 0 and marker.exists()


def test_python_dash_m_cli_main():
    proc = subprocess.run([sys.executable, "-m", "ncbounds.cli.main", "--help"], capture_output=True, text=True, env=_env(),
                          cwd=REPO, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0 and "report" in proc.stdout


# ---------------------------------------------------------------------------------------------
# successful runs: data on stdout / -o FILE, progress and notes on stderr


def _check_report_json(rep: dict, n_test: int) -> None:
    assert {"path", "sha256", "format"} <= set(rep["checkpoint"])
    assert rep["checkpoint"]["format"] == "state_dict" and len(rep["checkpoint"]["sha256"]) == 64
    assert {"arch", "num_classes", "num_params", "penultimate"} <= set(rep["model"])
    assert rep["model"]["num_classes"] == 10 and rep["model"]["num_params"] == 64 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10
    assert {"spec", "splits"} <= set(rep["data"])
    assert rep["data"]["splits"]["test"]["n"] == n_test and rep["data"]["splits"]["train"]["n"] > 0
    for split in ("train", "test"):
        err = rep["errors"][split]
        assert {"error", "n", "ci95"} <= set(err)
        lo, hi = err["ci95"]
        assert 0.0 <= lo <= err["error"] <= hi <= 1.0
    assert rep["errors"]["test"]["n"] == n_test
    assert "penultimate" in rep["layers"]
    for entry in rep["layers"].values():
        assert isinstance(entry["dim"], int)
        assert set(entry["metrics"]) >= {"train", "test"}
        assert isinstance(entry["metrics"]["test"]["nc1"], float)
    assert isinstance(rep["bounds"], list)
    assert isinstance(rep["timings"], dict) and rep["timings"]


def test_report_json_to_file(files, tmp_path):
    out_file = tmp_path / "sub" / "report.json"
    code, out, err = run_cli("report", files / "good.pt", "--arch", ARCH, "--data", "digits", "--layers", "all",
                             "--format", "json", "-o", out_file)
    assert code == 0, err
    assert out == ""
    assert "Traceback" not in err and str(out_file) in err
    rep = json.loads(out_file.read_text())
    _, _, _, yte = digits_split()
    _check_report_json(rep, len(yte))
    assert set(rep["layers"]) == {"features.1", "penultimate"}
    assert not list(tmp_path.glob("sub/*.tmp"))  # written atomically


def test_report_stdout_is_only_data(files):
    """Real process: stdout parses as one JSON document; the progress bar and notes went to stderr."""
    proc = run_subprocess("report", files / "good.pt", "--arch", ARCH, "--data", f"npz:{files / 'no7.npz'}",
                          "--format", "json", "--batch-size", "50")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    _, _, _, yte = digits_split()
    _check_report_json(rep, int((yte != 7).sum()))
    assert "Traceback" not in proc.stderr
    assert rep["notes"], "an absent test class must give a note"
    err_lines = proc.stderr.splitlines()
    for note in rep["notes"]:
        assert f"note: {note}" in err_lines
    assert any("train" in ln and "/" in ln for ln in err_lines if not ln.startswith("note:")), proc.stderr  # progress
    assert "note:" not in proc.stdout


def test_inspect_shows_the_layout(files):
    code, out, err = run_cli("inspect", files / "gpu_ddp.pt")
    assert code == 0, err
    fields = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    assert fields["format"] == "wrapped"
    assert fields["saved_devices"] == "cuda:0"
    assert fields["num_params"] == str(64 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10)
    assert fields["prefixes"] == "module."
    assert fields["head"] == "module.fc"
    code, out, err = run_cli("inspect", files / "gpu_ddp.pt", "--format", "json")
    assert code == 0, err
    info = json.loads(out)
    assert info["saved_devices"] == ["cuda:0"] and info["prefixes"] == ["module."] and info["head"] == "module.fc"
    assert info["wrapper_key"] == "model" and info["extra"] == {"epoch": 4}
