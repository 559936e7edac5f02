"""TOML configs, the toolkit's config format (docs/FORMATS.md): ``key=value`` overrides read as TOML values,
nested tables flattened to dotted keys, and tables written back as TOML. Standard library only (``tomllib``).

Each package keeps its own keys and checks; this module only reads and writes the text.

>>> parse_override("train.lr=0.01"), parse_override("name=cpu small")
(('train.lr', 0.01), ('name', 'cpu small'))
>>> print(to_toml({"rounds": 3, "learner": {"path": "dpsnet.kd:Learner", "kwargs": {"preset": "cpu-small"}}}), end="")
rounds = 3
<BLANKLINE>
[learner]
path = "dpsnet.kd:Learner"
kwargs = { "preset" = "cpu-small" }
"""

from __future__ import annotations

import numbers
import re
import tomllib
from collections.abc import Collection, Iterable, Mapping
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def parse_value(text: str) -> Any:
    """An override's value: TOML when it parses (``0.01``, ``true``, ``[1, 2]``, ``"a b"``, ``{ k = 1 }``), else
    the text itself (a bare string such as ``cpu-small``)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=0.01"`` -> ``("train.lr", 0.01)``: the key stripped, the value read by :func:`parse_value`.

    A text without ``=`` or with an empty key raises ``ValueError("override '...' should look like key=value")``;
    callers add their own hint (an example, the valid keys).
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {text!r} should look like key=value")
    return key.strip(), parse_value(raw.strip())


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Several ``key=value`` overrides as ``{dotted key: value}``; a key given twice keeps its last value."""
    return dict(parse_override(item) for item in items)


def flatten(table: Mapping, *, leaves: Collection[str] = (), prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``; the dotted keys in ``leaves`` keep their table as one value
    (e.g. a table of keyword arguments)."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted not in leaves:
            flat.update(flatten(value, leaves=leaves, prefix=f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _string(text: str) -> str:
    escaped = "".join(_ESCAPES.get(ch, f"\\u{ord(ch):04x}" if ord(ch) < 0x20 or ord(ch) == 0x7F else ch)
                      for ch in text)
    return f'"{escaped}"'


def _key(name: Any) -> str:
    name = str(name)
    return name if _BARE_KEY.fullmatch(name) else _string(name)


def toml_value(value: Any) -> str:
    """One value as TOML: booleans, numbers (numpy's too), strings, lists and tuples, tables (inline, keys quoted).

    >>> toml_value([1, 2.5, True, "a\\"b"])
    '[1, 2.5, true, "a\\\\"b"]'
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_string(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) as TOML")


def to_toml(table: Mapping) -> str:
    """A table as a TOML document: its values first, then one ``[section]`` per table value (tables nested deeper
    are written inline). ``tomllib.loads(to_toml(t)) == t`` for tables of TOML values."""
    lines = [f"{_key(k)} = {toml_value(v)}" for k, v in table.items() if not isinstance(v, Mapping)]
    for name, section in table.items():
        if isinstance(section, Mapping):
            lines += ["", f"[{_key(name)}]", *(f"{_key(k)} = {toml_value(v)}" for k, v in section.items())]
    return "\n".join(lines) + "\n"
