"""Helpers shared by the command modules: error handling, output, shared evaluation options.

Kept apart from ``ncbounds.cli.main`` so command modules can import them without importing the group
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


def _annotation_type(annotation: str):
    text = str(annotation)
    return int if text.startswith("int") else float if text.startswith("float") else str


def evaluation_options(func):
    """The options shared by ``report`` and ``batch``, one per field of :class:`ncbounds.options.EvalOptions`."""
    from ncbounds.options import option_fields

    opts = []
    for f in option_fields():
        meta = f.metadata
        if meta["flag"] is None:
            continue
        kind = meta["kind"]
        if kind == "flag":
            opts.append(click.option(meta["flag"], f.name, is_flag=True, help=meta["help"]))
        elif kind == "bound_options":
            opts.append(click.option(meta["flag"], f.name, multiple=True, metavar="NAME.KEY=VALUE", help=meta["help"]))
        elif kind in ("json", "shots"):
            opts.append(click.option(meta["flag"], f.name, help=meta["help"]))
        elif f.default is None:
            opts.append(click.option(meta["flag"], f.name, type=_annotation_type(f.type), help=meta["help"]))
        else:
            kind_type = click.Choice(meta["choices"]) if meta["choices"] else _annotation_type(f.type)
            opts.append(click.option(meta["flag"], f.name, type=kind_type, default=f.default, show_default=True, help=meta["help"]))
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


def _bound_options(items) -> dict:
    """``("pacbayes_gauss.screen=4", "jiang-flatness.mc_samples=20")`` → ``{"pacbayes_gauss": {"screen": 4}, …}``."""
    from ncbounds.errors import UsageError
    from ncbounds.io.kv import parse_value

    out: dict = {}
    for item in items or ():
        target, dot, rest = item.partition(".")
        key, eq, value = rest.partition("=")
        if not (dot and eq and target.strip() and key.strip()):
            raise UsageError(f"--bound-option takes NAME.KEY=VALUE (e.g. pacbayes_gauss.mc_delta_fraction=0.3), not {item!r}.")
        out.setdefault(target.strip(), {})[key.strip()] = parse_value(value)
    return out


def _options_from(kw: dict):
    """The :class:`EvalOptions` of the shared options' values (parsed as their field's kind says)."""
    from ncbounds.options import EvalOptions, option_fields

    values = {}
    for f in option_fields():
        if f.metadata["flag"] is None or f.name not in kw:
            continue
        kind, value = f.metadata["kind"], kw[f.name]
        if kind == "json":
            value = _json_object(value, f.metadata["flag"])
        elif kind == "shots":
            value = _shots(value)
        elif kind == "bound_options":
            value = _bound_options(value)
        values[f.name] = value
    return EvalOptions(**values)
