"""Helpers shared by the command modules: error handling, output, shared evaluation options.

Kept apart from ``cli.main`` so command modules can import them without importing the group
(which imports the command modules).
"""

from __future__ import annotations

import functools
import inspect as pyinspect
import json
import os
import sys
import traceback

import click

from ncbounds.errors import Interrupted, NCBoundsError
from ncbounds.io.output import check_output_path, write_atomic


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def handle_errors(func):
    """Turn library errors into one line on stderr and an exit code; --debug shows the traceback."""

    wants_debug = "debug" in pyinspect.signature(func).parameters

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        debug = kwargs.pop("debug", False)
        if wants_debug:
            kwargs["debug"] = debug
        try:
            return func(*args, **kwargs)
        except Interrupted as exc:
            click.echo(f"interrupted: {exc}", err=True)
            sys.exit(exc.exit_code)
        except NCBoundsError as exc:
            if debug:
                traceback.print_exc()
            _fail(str(exc), exc.exit_code)
        except BrokenPipeError:
            _quiet_stdout()  # the reader (e.g. `| head`) stopped reading: not an error of ours
            sys.exit(0)
        except KeyboardInterrupt:
            click.echo("interrupted: stopped before finishing; nothing partial was written.", err=True)
            sys.exit(Interrupted.exit_code)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except Exception as exc:  # noqa: BLE001 - last resort: one line, no traceback without --debug
            if debug:
                traceback.print_exc()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            _fail(f"unexpected {type(exc).__name__}: {first} (re-run with --debug for the traceback and report it).", 1)

    return click.option("--debug", is_flag=True, help="Show full tracebacks.")(wrapper)


def to_stdout(output: str | None) -> bool:
    """``-o`` not given, or ``-o -``: the data go to standard output."""
    return output is None or output == "" or output == "-"


def check_output(output: str | None) -> None:
    """Refuse an ``-o`` path that must not be replaced (directory, device, FIFO, socket) before any work."""
    if not to_stdout(output):
        check_output_path(output)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail on a closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (e.g. a test runner's stream)
        pass


def _write(data: str | bytes, output: str | None) -> None:
    """Data to stdout (``-o`` absent or ``-``) or atomically to a file (:func:`ncbounds.io.output.write_atomic`)."""
    if to_stdout(output):
        if isinstance(data, bytes):
            click.get_binary_stream("stdout").write(data)
        else:
            click.echo(data)
        return
    if isinstance(data, str) and not data.endswith("\n"):
        data += "\n"
    path = write_atomic(output, data)
    shown = output if os.path.realpath(output) == str(path) else f"{output} (→ {path})"
    click.echo(f"wrote {shown}", err=True)


def _json_object(text: str | None, what: str) -> dict:
    from ncbounds.errors import UsageError

    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} must be a JSON object such as '{{\"width\": 512}}' ({exc.msg}).") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a JSON object such as '{{\"width\": 512}}'.")
    return value


def evaluation_options(func):
    """Options shared by `report` and `batch`."""
    opts = [
        click.option("--arch", help="Architecture spec: mlp:width=512, resnet18-cifar, file.py:Class, pkg.mod:factory."),
        click.option("--arch-kwargs", help="JSON object of architecture keyword arguments."),
        click.option("--data", "data", help="Data spec: digits, mnist1d, gaussian-etf:K=10,d=64, npz:FILE, cifar10:ROOT, features:FILE."),
        click.option("--layers", help="Extra layers to measure: NAME,NAME or 'all' (the penultimate layer is always measured)."),
        click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]."),
        click.option("--batch-size", default=256, show_default=True, type=int),
        click.option("--conv-reduce", type=click.Choice(["avg", "flatten"]), default="avg", show_default=True, help="Reduction of conv feature maps."),
        click.option("--convention", default="canonical", show_default=True, help="Metric convention (see `ncbounds conventions`)."),
        click.option("--trust-checkpoint", is_flag=True, help="Allow arbitrary unpickling (only for checkpoints from a trusted source)."),
        click.option("--trust-code", is_flag=True,
                     help="Let sidecars name Python files / import paths as architectures and paths outside their folder "
                          "(only for folders you trust)."),
        click.option("--seed", default=0, show_default=True, type=int),
        click.option("--bounds", default="default", show_default=True,
                     help="Bounds: default (all but Monte-Carlo ones), all, none, certificates, predictors, a group or NAME,NAME."),
        click.option("--delta", default=0.05, show_default=True, type=float, help="Failure probability of each certificate."),
        click.option("--init", "init", help="Checkpoint at initialization (prior centre / distance-to-init terms)."),
        click.option("--mc-samples", default=100, show_default=True, type=int, help="Monte-Carlo weight draws for PAC-Bayes."),
        click.option("--shots", help="m values for the m-shot transfer bounds, e.g. 1,5,10 (default: training samples per class)."),
        click.option("--amp", is_flag=True, help="Run the forward pass under mixed precision (statistics stay float64)."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def _shots(text: str | None):
    from ncbounds.errors import UsageError

    if not text:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--shots must be comma-separated positive integers such as 1,5,10, not {text!r}.") from None
    if any(v < 1 for v in values):
        raise UsageError(f"--shots must be positive integers, not {text!r}.")
    return values


def _options_from(kw: dict):
    from ncbounds.pipeline import EvalOptions

    return EvalOptions(
        bounds=kw["bounds"], delta=kw["delta"], init=kw["init"], mc_samples=kw["mc_samples"], shots=_shots(kw["shots"]), amp=kw["amp"],
        arch=kw["arch"], arch_kwargs=_json_object(kw["arch_kwargs"], "--arch-kwargs"), data=kw["data"],
        layers=kw["layers"], device=kw["device"], batch_size=kw["batch_size"], conv_reduce=kw["conv_reduce"],
        convention=kw["convention"], trust_checkpoint=kw["trust_checkpoint"], trust_code=kw["trust_code"], seed=kw["seed"],
    )


