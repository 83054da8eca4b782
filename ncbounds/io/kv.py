"""``key=value`` argument lists of architecture and data specs (``mlp:width=512,depth=3``).

Pure string parsing shared by :mod:`ncbounds.models.spec` and :mod:`ncbounds.io.datasets`; it lives in
``io`` because the data loaders may not import ``ncbounds.models``. Every failure is a
:class:`~ncbounds.errors.UsageError` with one sentence naming the problem.
"""

from __future__ import annotations

import re
from typing import Any

from ncbounds.errors import UsageError

__all__ = ["parse_kv", "parse_value"]

#: A keyword-argument name: a Python identifier.
_IDENT = re.compile(r"^[A-Za-z_]\w*$")


def _split_top(s: str, sep: str = ",") -> list[str]:
    """Split ``s`` on ``sep`` outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in s:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if quote or depth != 0:
        raise UsageError(f"unbalanced quotes or brackets in `{s}`; close every [ ( ' and \"")
    parts.append("".join(cur))
    return parts


def parse_value(text: str) -> Any:
    """Parse one value of a ``k=v`` list.

    In order: ``[a,b]`` → list and ``(a,b)`` → tuple (elements parsed recursively); quoted text →
    the string without quotes; ``none``/``null`` → ``None``; ``true``/``false`` → bool (all three
    case-insensitive); an ``int`` literal → int; a ``float`` literal (``1e-3``, ``inf``) → float;
    anything else → the stripped string.
    """
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1]
    if len(t) >= 2 and (t[0], t[-1]) in (("[", "]"), ("(", ")")):
        inner = t[1:-1].strip()
        parts = _split_top(inner) if inner else []
        if parts and not parts[-1].strip():  # trailing comma: (3,)
            parts = parts[:-1]
        items = [parse_value(p) for p in parts]
        return items if t[0] == "[" else tuple(items)
    low = t.lower()
    if low in ("none", "null"):
        return None
    if low == "true":
        return True
    if low == "false":
        return False
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


def parse_kv(s: str | None) -> dict[str, Any]:
    """Parse ``"k=v,k2=v2"`` into a dict with values typed by :func:`parse_value`.

    Commas inside brackets or quotes do not split (``sizes=[1,2],name='a,b'``). An empty or
    ``None`` string gives ``{}``. Keys must be Python identifiers; an item without ``=``, an invalid
    key or a repeated key raises :class:`UsageError`. Used for architecture and data specs alike.
    """
    out: dict[str, Any] = {}
    if s is None or not s.strip():
        return out
    for item in _split_top(s):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            raise UsageError(
                f"`{item.strip()}` in `{s}` is not of the form key=value; write e.g. width=512"
            )
        if not _IDENT.match(key):
            raise UsageError(
                f"`{key}` in `{s}` is not a valid argument name; use letters, digits and _"
            )
        if key in out:
            raise UsageError(f"argument `{key}` is given twice in `{s}`; keep one")
        out[key] = parse_value(value)
    return out
