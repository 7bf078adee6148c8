"""Config validation errors as a user reads them: one line per problem with its key path (union tags
dropped), the bad value, and "did you mean" for a mistyped key."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from edge_agent.sources import SOURCES


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unwrap(annotation: Any) -> list[Any]:
    """The classes a field annotation can hold (Optional/Union/Annotated/list unwrapped one level)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [c for a in typing.get_args(annotation) for c in _unwrap(a)]
    return [annotation]


def _walk_loc(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], type[BaseModel] | None]:
    """Follow an error location through the config classes from ``root``: drop the union tags pydantic
    inserts (``source.camera.fps`` -> ``source.fps``) and return the model class the last key belongs to."""
    current: list[Any] = [root]
    clean: list[Any] = []
    owner: type[BaseModel] | None = root
    for part in loc:
        models = [c for c in current if isinstance(c, type) and issubclass(c, BaseModel)]
        if isinstance(part, int):
            clean.append(part)
            items = [typing.get_args(c)[0] if typing.get_args(c) else c for c in current]
            current = [a for c in items for a in _unwrap(c)]
            continue
        # a discriminated-union tag (e.g. 'camera') or a plain union member name ('str', 'int')
        tagged = [m for m in models if "type" in m.model_fields and m.model_fields["type"].default == part]
        if len(models) > 1 and tagged:
            current = tagged
            continue
        if part in ("str", "int", "float", "bool", "list", "dict", "none") or (
            isinstance(part, str) and (part.startswith("function-") or part.startswith("literal["))
        ):
            continue
        owner = next((m for m in models if part in m.model_fields), models[0] if models else None)
        clean.append(part)
        if owner is not None and part in owner.model_fields:
            current = _unwrap(owner.model_fields[part].annotation)
        else:
            current = []
    return tuple(clean), owner


def _describe(root: type[BaseModel], err: dict[str, Any]) -> str:
    loc, owner = _walk_loc(root, tuple(err["loc"]))
    kind = err["type"]
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    elif msg.startswith("Assertion failed, "):
        msg = msg[len("Assertion failed, ") :]
    msg = msg[:1].lower() + msg[1:]
    value = err.get("input")
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else "?"
        allowed = sorted(owner.model_fields) if owner is not None else []
        from difflib import get_close_matches  # here: a config that loads never needs it

        close = get_close_matches(key, allowed, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"{_format_loc(loc)}: unknown key{hint} (allowed here: {', '.join(allowed)})"
    if kind == "missing":
        return f"{_format_loc(loc)}: required key is missing"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        where = _format_loc(loc)
        what = "source type" if loc and loc[-1] == "source" else "type"
        return f"{where}.type: unknown {what} {ctx.get('tag')!r}; use one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"{_format_loc(loc)}: needs a 'type' key ({', '.join(SOURCES)})"
    if isinstance(value, (dict, list)) and kind in ("value_error", "assertion_error"):
        return f"{_format_loc(loc)}: {msg}"  # a rule across several keys: the message names them
    return f"{_format_loc(loc)}: {msg} (got {_short(value)})"


def format_validation_error(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    """One line per problem of validating ``root``, each with its key path and the bad value."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        line = _describe(root, err)
        if line not in lines:
            lines.append(line)
    return lines
