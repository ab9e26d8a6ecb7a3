"""Value checks: a config value must have its default's type.

Text (command-line overrides, and YAML scalars such as FastReID's ``NAME: ("A", "B",)``,
which YAML reads as a string) is parsed into the type the key holds. A wrong value is a
one-line ``ReidError`` naming the key, the expected type, the value and where it came from.
"""
from __future__ import annotations

import ast
from typing import Any, Callable

import yaml

from reid.errors import ReidError

# Keys that hold one path or several (FastReID 1.4 lists several teachers): a string stays a
# string; a list, a YAML "[a, b]" or a Python "('a', 'b',)" becomes a list of strings.
STR_OR_LIST_KEYS = frozenset({"KD.MODEL_CONFIG", "KD.MODEL_WEIGHTS"})

# Element kind of list keys whose default is empty (the kind cannot be read off the default).
LIST_ELEMENT_KINDS = {"DATALOADER.SET_WEIGHT": "number", "PLUGINS": "string"}

Wrong = Callable[[str], ReidError]


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_plain(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


# kind -> (element check, what a list of that kind is called in messages)
ELEMENT_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "number": (is_number, "a list of numbers"),
    "string": (lambda v: isinstance(v, str), "a list of strings"),
    "plain": (_is_plain, "a list of plain values (numbers, strings, booleans)"),
}


def coerce(key: str, default: Any, value: Any, label: str, source: str) -> Any:
    """``value`` converted to the type of ``default`` (key ``key``, spelled ``label`` by the
    user), or a ReidError."""
    def wrong(expected: str) -> ReidError:
        return ReidError(f"config key {label} expects {expected}, got {value!r} "
                         f"({type(value).__name__}) ({source})")

    if key in STR_OR_LIST_KEYS:
        return _coerce_str_or_list(value, wrong)
    if isinstance(default, (list, tuple)):
        return _coerce_list(key, default, value, wrong)
    return _coerce_scalar(default, value, wrong)


def parse_sequence_text(text: str, wrong: Wrong, expected: str) -> list | tuple | None:
    """``"[1, 2]"`` (YAML) or ``'("A", "B",)'`` (a Python tuple: FastReID's spelling) -> the
    sequence; None when the text is not written as a sequence. A sequence that does not
    parse is an error (it must not silently become a one-item list of its own text)."""
    stripped = text.strip()
    if stripped.startswith("("):
        try:
            # literal_eval evaluates literals only (no names, calls or attributes).
            parsed = ast.literal_eval(stripped)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise wrong(expected) from None
        return parsed if isinstance(parsed, tuple) else (parsed,)  # "(A)" is one item
    if stripped.startswith("["):
        try:
            parsed = yaml.safe_load(stripped)
        except yaml.YAMLError:
            raise wrong(expected) from None
        return parsed if isinstance(parsed, list) else None
    return None


def _coerce_str_or_list(value: Any, wrong: Wrong) -> str | list[str]:
    expected = "a string or a list of strings"
    if isinstance(value, str):
        parsed = parse_sequence_text(value, wrong, expected)
        if parsed is None:
            return value
        value = parsed
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise wrong(expected)


def element_kind(key: str, default: list | tuple) -> str:
    if key in LIST_ELEMENT_KINDS:
        return LIST_ELEMENT_KINDS[key]
    if default and all(is_number(d) for d in default):
        return "number"
    if default and all(isinstance(d, str) for d in default):
        return "string"
    return "plain"


def _coerce_list(key: str, default: list | tuple, value: Any, wrong: Wrong) -> list | tuple:
    kind = element_kind(key, default)
    check, expected = ELEMENT_KINDS[kind]
    if isinstance(value, str):
        parsed = parse_sequence_text(value, wrong, expected)
        if parsed is None:
            # A bare item is a one-item list: "CUHK03" -> ("CUHK03",), "224" -> [224].
            item = _parse_float(_parse_scalar_text(value)) if kind == "number" else value
            parsed = [item]
        value = parsed
    if not isinstance(value, (list, tuple)):
        raise wrong("a list")
    if not all(check(v) for v in value):
        raise wrong(expected)
    return type(default)(value)


def _coerce_scalar(default: Any, value: Any, wrong: Wrong) -> Any:
    if isinstance(value, str) and not isinstance(default, str):
        value = _parse_scalar_text(value)
        if isinstance(default, float) and isinstance(value, str):
            value = _parse_float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool):
            raise wrong("an integer")
        return value
    if isinstance(default, float):
        if not is_number(value):
            raise wrong("a number")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    return value


def _parse_scalar_text(text: str) -> Any:
    """A YAML scalar: ``"7"`` -> 7, ``"True"`` -> True, ``".inf"`` -> inf; else the text."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _parse_float(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return float(text)
    except ValueError:
        return text
