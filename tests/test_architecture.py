"""The shape of the package: layer rules, no cycles, small modules, what gets installed.

* the import-linter contracts of ``pyproject.toml`` hold (one direction io → models → stats →
  metrics/weights/transfer → bounds → report → orchestration; metrics, bounds, weights and transfer
  import no click, no file I/O and no device/orchestration module) — and they do break when a
  deliberate violation is added to a copy of the package;
* there is no import cycle between modules (strongly connected components of grimp's graph);
* no module of ``ncbounds/`` or ``cli/`` is over 500 lines;
* no docstring cites the internal design document;
* ``setup.cfg`` lists every package, and the command line is installed as ``ncbounds.cli`` — never as a
  top-level ``cli``; only ``ncbounds/__main__.py`` imports it.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

importlinter = pytest.importorskip("importlinter")
grimp = pytest.importorskip("grimp")

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "pyproject.toml"


def _lint(package_parent: Path) -> subprocess.CompletedProcess:
    """Run import-linter on the ``ncbounds`` package found under ``package_parent`` (in a fresh process)."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(CONFIG)!r}, no_cache=True, no_logo=True))")
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=package_parent, timeout=300)


def test_import_contracts_hold():
    done = _lint(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


def test_import_contracts_catch_a_violation(tmp_path):
    shutil.copytree(REPO / "ncbounds", tmp_path / "ncbounds", ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "ncbounds" / "metrics" / "collapse.py", "a") as fh:
        fh.write("\nimport ncbounds.report.record  # noqa: E402,F401 - a deliberate upward import\n")
    with open(tmp_path / "ncbounds" / "bounds" / "predictors.py", "a") as fh:
        fh.write("\nimport click  # noqa: E402,F401 - a deliberate import of the command-line library\n")
    done = _lint(tmp_path)
    assert done.returncode != 0
    assert "0 kept, 2 broken" in done.stdout, done.stdout
    assert "ncbounds.metrics.collapse -> ncbounds.report.record" in done.stdout
    assert "ncbounds.bounds.predictors -> click" in done.stdout


def _strongly_connected(graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the components with more than one module, i.e. the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_strongly_connected_finds_a_cycle():
    assert _strongly_connected({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert _strongly_connected({"a": ["b"], "b": [], "c": ["a"]}) == []


def test_no_import_cycles():
    graph = grimp.build_graph("ncbounds")
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    assert _strongly_connected(edges) == []


def _sources() -> list[Path]:
    return sorted([*(REPO / "ncbounds").rglob("*.py"), *(REPO / "cli").rglob("*.py")])


def test_no_module_over_500_lines():
    long = {str(p.relative_to(REPO)): n for p in _sources() if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}


def test_no_citation_of_the_internal_design_document():
    cited = [str(p.relative_to(REPO)) for p in _sources() if re.search(r"DESIGN\b", p.read_text())]
    assert cited == []


def test_setup_cfg_lists_every_package_and_maps_the_cli():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    listed = {p.strip() for p in cfg["options"]["packages"].split() if p.strip()}
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "ncbounds").rglob("__init__.py")}
    assert listed == on_disk | {"ncbounds.cli"}
    mapping = dict(line.split("=") for line in cfg["options"]["package_dir"].split("\n") if "=" in line)
    assert {k.strip(): v.strip() for k, v in mapping.items()} == {"ncbounds.cli": "cli"}
    assert cfg["options.entry_points"]["console_scripts"].strip() == "ncbounds = ncbounds.cli.main:main"


def test_no_top_level_cli_is_installed(tmp_path):
    """Outside the repository, ``cli`` is not importable while ``ncbounds.cli`` is."""
    code = "import importlib.util as u; print(u.find_spec('cli') is None, u.find_spec('ncbounds.cli.main') is not None)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert done.stdout.split() == ["True", "True"], done.stdout + done.stderr


def test_only_main_imports_the_command_line():
    users = [str(p.relative_to(REPO)) for p in (REPO / "ncbounds").rglob("*.py")
             if re.search(r"^\s*(from|import) ncbounds\.cli\b", p.read_text(), re.M)]
    assert users == ["ncbounds/__main__.py"]
