"""Architecture specs (``--arch``): parse a spec string and build the ``nn.Module`` it names.

Spec forms (the "Inputs" section of ``docs/architecture.md``):

- ``NAME`` or ``NAME:k=v,k2=v2`` — a built-in (:func:`list_architectures`): ``mlp``, ``cnn1d``,
  ``lenet5``, ``resnet18-cifar``. Names are case-insensitive and ``_`` equals ``-``.
- ``path/to/file.py:Name`` — a class or factory function defined in a Python file. A relative path
  resolves against ``base_dir`` (the sidecar's folder) when given, else the working directory. The
  file's folder is on ``sys.path`` while it executes, so it may import its neighbours.
- ``package.module:name`` — a class or factory in an importable module (``name`` may be dotted,
  ``module:Outer.factory``). If the import fails and ``base_dir`` is given, it is retried with
  ``base_dir`` on ``sys.path``.
- ``torchvision:NAME`` / ``timm:NAME`` — when the package is installed; always built with random
  weights (``weights=None`` / ``pretrained=False``): weights come from the checkpoint and nothing is
  ever downloaded.

Every form accepts inline keyword arguments after one more colon (``file.py:Net:width=2``,
``torchvision:resnet18:num_classes=100``). Inline arguments override those of the ``kwargs`` dict
(e.g. ``arch_kwargs`` from a sidecar). Values are parsed by :func:`~ncbounds.io.kv.parse_kv`
(re-exported here).

Every failure is a :class:`~ncbounds.errors.UsageError` whose message is one sentence naming the
spec and the problem.

**Code that comes from a folder.** File and import-path specs run code. :func:`describe_spec` tells,
without running anything, which kind a spec is and which files it would execute; the pipeline refuses
file and import-path specs that come from a sidecar unless the user passes ``--trust-code``. Even then
(``strict_factory=True``), the spec must name a class derived from ``nn.Module`` or a function defined
in the named file/module — for an import path, one whose return annotation is an ``nn.Module`` class —
so a sidecar can never have an arbitrary callable (``subprocess:call``) called with its keyword arguments.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ncbounds.errors import UsageError
from ncbounds.io.kv import _IDENT, _split_top, parse_kv, parse_value  # noqa: F401 - re-exported
from ncbounds.models.builtin import CNN1D, MLP, LeNet5, ResNet18CIFAR

__all__ = ["BUILTIN_ARCHITECTURES", "ArchSpec", "build_model", "describe_spec", "list_architectures", "parse_kv", "parse_value"]

#: Built-in architecture names and their classes.
BUILTIN_ARCHITECTURES: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "cnn1d": CNN1D,
    "lenet5": LeNet5,
    "resnet18-cifar": ResNet18CIFAR,
}

_EXTERNAL = {"torchvision", "timm"}
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
# target ':' attribute [':' kwargs]; the attribute is a dotted identifier, so a Windows drive
# letter ("C:\\models.py:Net") stays in the target.
_FACTORY = re.compile(r"^(?P<target>.+?):(?P<attr>[A-Za-z_][\w.]*)(?::(?P<kw>.*))?$", re.DOTALL)


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------


def _defaults_text(obj: Callable[..., Any]) -> str:
    """``(k=default, ...)`` for a constructor's keyword arguments."""
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins without signature
        return "(...)"
    items = [p.name if p.default is p.empty else f"{p.name}={p.default!r}" for p in params]
    return "(" + ", ".join(items) + ")"


def list_architectures() -> dict[str, str]:
    """Built-in architectures: ``{name: "Class(k=default, ...): first docstring line"}``.

    Iterating gives the names (in a stable order); the values are one-line descriptions for
    ``ncbounds`` listings.
    """
    out = {}
    for name, cls in BUILTIN_ARCHITECTURES.items():
        doc = (cls.__doc__ or "").strip().splitlines()
        summary = doc[0].strip() if doc else ""
        sig = _defaults_text(cls)
        out[name] = f"{cls.__name__}{sig}: {summary}"
    return out


def _normalize_name(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _one_line(text: str) -> str:
    return " ".join(str(text).split()).rstrip(".")


# ----------------------------------------------------------------------------------------------
# factory resolution
# ----------------------------------------------------------------------------------------------

_FILE_CACHE: dict[tuple[str, int, int], Any] = {}


def _load_file_module(path: str, spec: str) -> Any:
    """Execute a Python file as a uniquely named module (cached by path, mtime and size)."""
    try:
        st = os.stat(path)
    except OSError:
        raise UsageError(
            f"architecture file `{path}` of spec `{spec}` does not exist; fix the path "
            "(relative paths resolve against the sidecar's folder or the working directory)"
        ) from None
    key = (path, st.st_mtime_ns, st.st_size)
    if key in _FILE_CACHE:
        return _FILE_CACHE[key]
    digest = hashlib.sha1(path.encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    mod_name = f"_ncbounds_arch_{stem}_{digest}"
    ispec = importlib.util.spec_from_file_location(mod_name, path)
    if ispec is None or ispec.loader is None:
        raise UsageError(f"cannot import `{path}` of spec `{spec}`; give a .py file")
    module = importlib.util.module_from_spec(ispec)
    sys.modules[mod_name] = module
    folder = os.path.dirname(path)
    sys.path.insert(0, folder)
    try:
        ispec.loader.exec_module(module)
    except Exception as exc:  # the user's file failed while executing
        sys.modules.pop(mod_name, None)
        raise UsageError(
            f"architecture file `{path}` of spec `{spec}` failed to import "
            f"({type(exc).__name__}: {_one_line(exc)}); fix the file"
        ) from exc
    finally:
        try:
            sys.path.remove(folder)
        except ValueError:  # pragma: no cover - the file removed it itself
            pass
    _FILE_CACHE[key] = module
    return module


def _import_module(name: str, spec: str, base_dir: str | None) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or name
        if base_dir and name.split(".")[0] == missing.split(".")[0]:
            sys.path.insert(0, base_dir)
            try:
                return importlib.import_module(name)
            except ModuleNotFoundError:
                pass
            except Exception as exc2:
                raise UsageError(
                    f"module `{name}` of spec `{spec}` failed to import "
                    f"({type(exc2).__name__}: {_one_line(exc2)}); fix the module"
                ) from exc2
            finally:
                try:
                    sys.path.remove(base_dir)
                except ValueError:  # pragma: no cover
                    pass
        raise UsageError(
            f"module `{name}` of spec `{spec}` cannot be imported (no module named `{missing}`); "
            "install it or put its folder on PYTHONPATH"
        ) from None
    except Exception as exc:
        raise UsageError(
            f"module `{name}` of spec `{spec}` failed to import "
            f"({type(exc).__name__}: {_one_line(exc)}); fix the module"
        ) from exc


def _get_attr(module: Any, attr: str, where: str, spec: str) -> Callable[..., Any]:
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            candidates = sorted(
                n
                for n, v in vars(module).items()
                if not n.startswith("_")
                and (inspect.isclass(v) and issubclass(v, nn.Module) or inspect.isfunction(v))
                and getattr(v, "__module__", None) == module.__name__
            )
            hint = f"; it defines {', '.join(candidates)}" if candidates else ""
            raise UsageError(f"`{where}` has no `{attr}` (spec `{spec}`){hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"`{attr}` in `{where}` (spec `{spec}`) is not a class or function")
    return obj


def _split_factory(spec: str) -> tuple[str, str, str]:
    m = _FACTORY.match(spec)
    if m is None:
        raise UsageError(
            f"architecture spec `{spec}` names no factory; write `file.py:ClassName` or "
            "`package.module:factory`"
        )
    return m.group("target"), m.group("attr"), m.group("kw") or ""


def _unknown_builtin(spec: str) -> UsageError:
    known = ", ".join(BUILTIN_ARCHITECTURES)
    return UsageError(
        f"unknown architecture `{spec}`; built-ins are {known} "
        "(or use `path/to/file.py:Name`, `package.module:name`, `torchvision:NAME`, `timm:NAME`)"
    )


def _external(pkg: str, rest: str, spec: str, kwargs: dict[str, Any]) -> nn.Module:
    name, _, kw = rest.partition(":")
    name = name.strip()
    if not name:
        raise UsageError(f"architecture spec `{spec}` names no model; write `{pkg}:NAME`")
    if importlib.util.find_spec(pkg) is None:
        raise UsageError(f"architecture `{spec}` needs `pip install {pkg}`")
    merged = {**kwargs, **parse_kv(kw)}
    module = importlib.import_module(pkg)
    if pkg == "torchvision":
        if merged.get("weights") is not None:
            raise UsageError(
                f"architecture `{spec}` asks for pretrained weights; ncbounds never downloads, "
                "so drop `weights` and let the checkpoint provide them"
            )
        merged["weights"] = None
        models = module.models
        if hasattr(models, "list_models") and name not in models.list_models():
            raise UsageError(
                f"torchvision has no model `{name}` (spec `{spec}`); "
                "pick one from torchvision.models.list_models()"
            )
        factory = getattr(models, "get_model", None)
        if factory is not None:
            return _call(lambda **kw: factory(name, **kw), merged, spec, check=False)
        return _call(_get_attr(models, name, "torchvision.models", spec), merged, spec)
    # timm
    if merged.get("pretrained"):
        raise UsageError(
            f"architecture `{spec}` asks for pretrained weights; ncbounds never downloads, "
            "so drop `pretrained` and let the checkpoint provide them"
        )
    merged["pretrained"] = False
    if hasattr(module, "is_model") and not module.is_model(name):
        raise UsageError(f"timm has no model `{name}` (spec `{spec}`); see timm.list_models()")
    return _call(lambda **kw: module.create_model(name, **kw), merged, spec, check=False)


def _call(
    factory: Callable[..., Any], kwargs: dict[str, Any], spec: str, check: bool = True
) -> nn.Module:
    """Call ``factory(**kwargs)``: check the arguments first, turn failures into UsageError."""
    if check:
        try:
            sig = inspect.signature(factory)
        except (TypeError, ValueError):  # pragma: no cover - no introspectable signature
            sig = None
        if sig is not None:
            try:
                sig.bind(**kwargs)
            except TypeError as exc:
                params = [
                    p.name
                    for p in sig.parameters.values()
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                ]
                accepted = ", ".join(params) if params else "none"
                raise UsageError(
                    f"architecture `{spec}` rejects its arguments ({_one_line(exc)}); "
                    f"accepted arguments: {accepted}"
                ) from None
    try:
        model = factory(**kwargs)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(
            f"building architecture `{spec}` failed ({type(exc).__name__}: {_one_line(exc)}); "
            "fix its arguments"
        ) from exc
    if not isinstance(model, nn.Module):
        raise UsageError(
            f"architecture `{spec}` returned a {type(model).__name__}, not a torch.nn.Module; "
            "point the spec at a model class or a function returning one"
        )
    return model


@dataclass(frozen=True)
class ArchSpec:
    """What an architecture spec names, found without running anything (:func:`describe_spec`).

    ``kind``: ``"builtin"``, ``"external"`` (torchvision/timm), ``"file"`` (``path.py:Name``) or
    ``"import"`` (``package.module:name``); ``runs_code``: True for file and import specs; ``name``: the
    canonical built-in name (e.g. ``"mlp"`` for ``"MLP"``), the file path or the module; ``files``: the
    Python files the spec would execute that can be found without importing (the file of a file spec;
    for an import spec, a module file under ``base_dir`` if there is one); ``kwargs``: inline keyword
    arguments (parsed, or ``{}`` when they do not parse).
    """

    spec: str
    kind: str
    name: str
    runs_code: bool
    files: tuple[str, ...] = ()
    kwargs: dict = field(default_factory=dict)


def _safe_kv(text: str) -> dict[str, Any]:
    try:
        return parse_kv(text)
    except UsageError:
        return {}


def describe_spec(spec: str, base_dir: str | None = None) -> ArchSpec:
    """Classify an architecture spec (see :class:`ArchSpec`) without importing or executing anything."""
    spec = (spec or "").strip()
    head, _, rest = spec.partition(":")
    name = _normalize_name(head)
    if name in BUILTIN_ARCHITECTURES:
        return ArchSpec(spec, "builtin", name, False, (), _safe_kv(rest))
    if name in _EXTERNAL:
        model, _, kw = rest.partition(":")
        return ArchSpec(spec, "external", f"{name}:{model.strip()}", False, (), _safe_kv(kw))
    m = _FACTORY.match(spec)
    if m is None:
        return ArchSpec(spec, "unknown", spec, False)
    target, kw = m.group("target"), m.group("kw") or ""
    if target.endswith(".py") or "/" in target or os.sep in target:
        path = os.path.expanduser(target)
        if not os.path.isabs(path):
            path = os.path.join(base_dir or os.getcwd(), path)
        return ArchSpec(spec, "file", os.path.abspath(path), True, (os.path.abspath(path),), _safe_kv(kw))
    files: tuple[str, ...] = ()
    if base_dir and _DOTTED.match(target):
        stem = os.path.join(base_dir, *target.split("."))
        for cand in (stem + ".py", os.path.join(stem, "__init__.py")):
            if os.path.isfile(cand):
                files = (os.path.abspath(cand),)
                break
    return ArchSpec(spec, "import", target, True, files, _safe_kv(kw))


def _returns_module(func: Callable[..., Any]) -> bool:
    """True when ``func``'s return annotation resolves to ``nn.Module`` or a subclass."""
    try:
        hint = typing.get_type_hints(func).get("return")
    except Exception:  # noqa: BLE001 - an annotation that cannot be resolved is no evidence
        return False
    return inspect.isclass(hint) and issubclass(hint, nn.Module)


def _check_factory(factory: Any, module: Any, spec: str, is_file: bool) -> None:
    """The ``strict_factory`` rule of the module docstring; a UsageError when ``factory`` breaks it."""
    if inspect.isclass(factory):
        if issubclass(factory, nn.Module):
            return
        raise UsageError(f"architecture `{spec}` names the class {factory.__name__}, which is not a torch.nn.Module; "
                         "point the spec at a model class")
    defined_here = inspect.isfunction(factory) and getattr(factory, "__module__", None) == module.__name__
    if defined_here and (is_file or _returns_module(factory)):
        return
    if is_file:
        raise UsageError(f"architecture `{spec}` does not name a model class or a function defined in that file; "
                         "ncbounds only calls such factories for a spec from a sidecar")
    raise UsageError(f"architecture `{spec}` is not an nn.Module class or a factory function of that module annotated to return "
                     "an nn.Module; ncbounds does not call other callables for a spec from a sidecar (use the class, or "
                     "annotate the factory `-> torch.nn.Module`)")


def build_model(
    spec: str, kwargs: dict[str, Any] | None = None, base_dir: str | None = None, *, strict_factory: bool = False
) -> nn.Module:
    """Build the model named by an architecture ``spec`` (forms in the module docstring).

    ``kwargs`` (e.g. a sidecar's ``arch_kwargs``) are passed to the constructor/factory; inline
    ``k=v`` arguments in the spec override them. ``base_dir`` resolves relative file paths (and is a
    fallback import root for ``package.module:name``). The model is returned as constructed (random
    initialization, train mode, on CPU); loading weights and calling ``eval()`` are the caller's
    job. ``strict_factory`` (used for specs from sidecars) checks before any call that a file or import
    spec names an ``nn.Module`` class or a proper factory (module docstring). Every failure raises
    :class:`UsageError` with a one-sentence message.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError("the architecture spec is empty; pass --arch, e.g. `mlp:width=512`")
    spec = spec.strip()
    base = dict(kwargs or {})
    head, _, rest = spec.partition(":")
    name = _normalize_name(head)

    if name in BUILTIN_ARCHITECTURES:
        merged = {**base, **parse_kv(rest)}
        return _call(BUILTIN_ARCHITECTURES[name], merged, spec)
    if name in _EXTERNAL:
        return _external(name, rest, spec, base)
    if ":" not in spec:
        if spec.endswith(".py"):
            raise UsageError(
                f"architecture spec `{spec}` names a file but no factory; write `{spec}:ClassName`"
            )
        raise _unknown_builtin(spec)

    target, attr, kw = _split_factory(spec)
    merged = {**base, **parse_kv(kw)}
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    if is_file:
        path = os.path.expanduser(target)
        if not os.path.isabs(path):
            path = os.path.join(base_dir or os.getcwd(), path)
        module = _load_file_module(os.path.abspath(path), spec)
        factory = _get_attr(module, attr, target, spec)
    elif _DOTTED.match(target):
        module = _import_module(target, spec, base_dir)
        factory = _get_attr(module, attr, target, spec)
    else:
        raise _unknown_builtin(spec)
    if strict_factory:
        _check_factory(factory, module, spec, is_file)
    return _call(factory, merged, spec)
