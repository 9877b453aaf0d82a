"""Type and range checks for settings read from files (recipes, configs), with messages naming the key.

TOML gives ``true`` where a count was meant, ``6.5`` where an integer was, ``"abc"`` for a rate; Python
would accept all of them (``True`` is an ``int``) and fail later, after a run directory exists, or never.
``check_fields`` checks a dict against a dataclass's annotations before the dataclass is built.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import fields

# (low, high, low inclusive): a number must lie in this range; None = unbounded
Range = tuple[float | None, float | None, bool]
AT_LEAST_0: Range = (0, None, True)
AT_LEAST_1: Range = (1, None, True)
POSITIVE: Range = (0, None, False)


def _describe(tp) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args) + " (or leave it out)"
    origin = typing.get_origin(tp) or tp
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
            tuple: "a list", dict: "a table"}.get(origin, getattr(origin, "__name__", str(origin)))


def _check(value, tp, key: str, where: str):
    """``value`` converted to ``tp`` (int -> float only), or a ValueError naming key, expected type and value."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(value, a, key, where)
            except ValueError as e:
                errors.append(e)
        raise errors[0]
    bad = ValueError(f"[{where}] {key} must be {_describe(tp)}, got {value!r} ({type(value).__name__})")
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):  # TOML reads nan and inf; no setting means them
            raise ValueError(f"[{where}] {key} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad
        if origin is tuple and args and len(args) != len(value) and Ellipsis not in args:
            raise ValueError(f"[{where}] {key} must be a list of {len(args)} values, got {value!r}")
        item = args[0] if args else None
        out = [_check(v, item, f"{key}[{i}]", where) if item is not None else v for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad
        return value
    return value  # a nested dataclass, already built by the caller


def check_fields(cls, d: dict, where: str, ranges: dict[str, Range] | None = None) -> dict:
    """``d`` checked against ``cls``'s fields: unknown keys, types, and the given ranges; returns it converted."""
    valid = {f.name for f in fields(cls)}
    unknown = set(d) - valid
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in [{where}]; valid keys are {sorted(valid)}")
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in d.items():
        value = _check(value, hints[key], key, where)
        lo, hi, inclusive = (ranges or {}).get(key, (None, None, True))
        if value is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            below = lo is not None and (value < lo if inclusive else value <= lo)
            if below or (hi is not None and value > hi):
                bound = (f">= {lo}" if inclusive else f"> {lo}") if lo is not None else ""
                bound = f"{bound} and <= {hi}" if hi is not None and bound else bound or f"<= {hi}"
                raise ValueError(f"[{where}] {key} must be {bound}, got {value!r}")
        out[key] = value
    return out
