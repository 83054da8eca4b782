"""Running the command line in-process for tests."""

from __future__ import annotations

from click.testing import CliRunner
from ncbounds.cli.main import main


def run_cli(*args) -> tuple[int, str, str]:
    """Invoke the click group in-process; returns (exit code, stdout, stderr). An exception that is not
    a clean exit (a traceback a user would see) fails the test."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {result.exception}") from result.exception
    return result.exit_code, result.stdout, result.stderr
