"""Test-session set-up: ``ncbounds.cli`` is this checkout's ``cli/`` folder.

An editable install maps ``ncbounds.cli`` to the ``cli/`` folder of the checkout it was installed from
(``package_dir`` in ``setup.cfg``). When the tests run from another checkout of the repository (a git
worktree), ``ncbounds`` itself is imported from the working directory but that mapping would still
point at the installed checkout's ``cli/``; this finder makes the command line come from the same
checkout as the library, as installing this checkout would. Where both are the same folder it changes
nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

_CLI = Path(__file__).resolve().parents[1] / "cli"


class _CheckoutCli(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != "ncbounds.cli":
            return None
        return importlib.util.spec_from_file_location(fullname, _CLI / "__init__.py", submodule_search_locations=[str(_CLI)])


if (_CLI / "__init__.py").exists() and "ncbounds.cli" not in sys.modules:
    sys.meta_path.insert(0, _CheckoutCli())
