"""An entry's input schema read off its signature, for entries that declare none.

Most plugins never write `input_schema=` (the N.E.K.O documentation's examples
do not), yet a caller, or the dashboard's form, wants to know what to send.
The signature already says it: the keyword parameters, which have defaults,
and (where annotated) their types. The result is a plain JSON Schema object
with a `$comment` saying where it came from; a declared schema always wins.
"""

from __future__ import annotations

import inspect
import math
import re
import types
import typing
from typing import Any

DERIVED_COMMENT = "derived from the entry's signature"

_JSON_TYPES: dict[Any, str] = {
    str: "string", int: "integer", float: "number", bool: "boolean",
    list: "array", tuple: "array", set: "array", frozenset: "array", dict: "object",
}
_JSON_TYPE_NAMES = {getattr(kind, "__name__", ""): name for kind, name in _JSON_TYPES.items()}
# `from __future__ import annotations` leaves annotations as text: "int", "list[str]", "str | None".
_NAME_AT_START = re.compile(r"\s*(?:typing\.)?([A-Za-z_]\w*)")
_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def schema_from_signature(signature: inspect.Signature) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required = []
    takes_any = False
    for param in signature.parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            takes_any = True
        if param.kind not in _KEYWORD_KINDS:
            continue
        spec: dict[str, Any] = {}
        json_type = _json_type(param.annotation)
        if json_type is not None:
            spec["type"] = json_type
        choices = _literal_choices(param.annotation)
        if choices is not None:
            spec["enum"] = choices
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
        elif param.default is not None and _is_json_scalar(param.default):  # None: "optional", not a value to show
            spec["default"] = param.default
        properties[param.name] = spec
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    if not takes_any:
        schema["additionalProperties"] = False
    schema["$comment"] = DERIVED_COMMENT
    return schema


def _json_type(annotation: Any) -> str | None:
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, str):
        return _json_type_of_text(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return None  # not a type: schema_from_signature() makes it an enum
    if origin in (typing.Union, types.UnionType):
        kinds = {_json_type(arg) for arg in typing.get_args(annotation) if arg is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    kind = origin if origin is not None else annotation
    return _JSON_TYPES.get(kind) if isinstance(kind, type) else None  # `x: ["a", "b"]` documents, it is no type


def _json_type_of_text(text: str) -> str | None:
    text = text.strip().strip("'\"")  # a quoted annotation under `from __future__ import annotations`
    parts = [part for part in (p.strip() for p in text.split("|")) if part not in ("None", "")]
    if len(parts) == 1 and (match := _NAME_AT_START.match(parts[0])):
        name = match.group(1)
        if name == "Optional":
            return _json_type_of_text(parts[0][match.end():].strip().removeprefix("[").removesuffix("]"))
        return _JSON_TYPE_NAMES.get(name.lower() if name in ("List", "Dict", "Tuple", "Set", "FrozenSet") else name)
    return None


# A default shown in a schema must survive msgpack (64-bit integers, valid UTF-8)
# and a browser's JSON (integers beyond 2**53 lose digits there).
_SAFE_INTEGER = 2**53


def _is_json_scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int):  # bool included
        return -_SAFE_INTEGER <= value <= _SAFE_INTEGER
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate
            return False
        return True
    return False


def _literal_choices(annotation: Any) -> list[Any] | None:
    """`Literal["a", "b"]` (or `Literal[...] | None`): its values, if all are JSON scalars."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        literals = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _literal_choices(literals[0]) if len(literals) == 1 else None
    if typing.get_origin(annotation) is not typing.Literal:
        return None
    values = list(typing.get_args(annotation))
    return values if values and all(_is_json_scalar(value) for value in values) else None
