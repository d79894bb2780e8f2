"""Checking input against the JSON Schemas the API publishes, with messages that name the field.

The schemas themselves are written once (tasks.py for each task's arguments, openapi.py for the
requests): /openapi.json shows them and this module enforces the very same objects, compiled by
fastjsonschema (draft-07 keywords, which OpenAPI 3.1's JSON Schema shares).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import fastjsonschema


def _printable(value: object) -> bool:
    """No control, format or separator characters but the space (formats apply to strings only)."""
    return not isinstance(value, str) or value.isprintable()


# Formats of our own; fastjsonschema checks these, schema readers see a name that says what.
FORMATS: dict[str, Callable[[object], bool]] = {"printable": _printable}

Schema = dict[str, Any]

_ARTICLE = {"integer": "an integer", "object": "an object", "array": "a list"}


class BadArguments(ValueError):
    """The input does not fit its schema (answered as 400, nothing enqueued)."""


@lru_cache(maxsize=256)
def _compiled(text: str) -> Callable[[Any], Any]:
    return fastjsonschema.compile(json.loads(text), formats=FORMATS)


def check(schema: Schema, value: Any, subject: str = "") -> Any:
    """Return `value` when it fits `schema`; else raise BadArguments naming the field.
    `subject` names the value itself (for instance "comida") when it is not inside an object."""
    try:
        _compiled(json.dumps(schema, sort_keys=True))(value)
    except fastjsonschema.JsonSchemaValueException as error:
        raise BadArguments(explain(error, subject)) from None
    return value


def explain(error: fastjsonschema.JsonSchemaValueException, subject: str = "") -> str:
    """One sentence for a failed keyword, built from the schema that failed."""
    rule, node, value = error.rule, error.definition or {}, error.value
    field = ".".join(filter(None, [subject, (error.name or "data").partition(".")[2]]))
    what = f"'{field}'" if field else "the value"
    if rule == "type":
        kinds = node["type"] if isinstance(node["type"], list) else [node["type"]]
        return f"{what} must be " + " or ".join(_ARTICLE.get(k, f"a {k}") for k in kinds)
    if rule in ("minimum", "maximum"):
        return f"{what} must be between {node.get('minimum')} and {node.get('maximum')}"
    if rule == "maxLength":
        return f"{what} is longer than {node['maxLength']} characters"
    if rule == "minLength" and node["minLength"] > 1:
        return f"{what} is shorter than {node['minLength']} characters"
    if rule == "minLength" or (rule == "pattern" and node.get("pattern") == r"\S"):
        return f"{what} must not be empty"
    if rule == "pattern" and "description" in node:
        return f"{what} must be {node['description']}"
    if rule == "format":
        return f"{what} contains non-printable characters" if node["format"] == "printable" else error.message
    if rule in ("enum", "const"):
        choices = node.get("enum", [node.get("const")])
        return f"{what} must be one of: {', '.join(map(str, choices))}"
    if rule == "required":
        missing = [name for name in node["required"] if name not in value]
        return f"{what if field else 'the object'} needs {', '.join(missing)}"
    if rule == "additionalProperties":
        unknown = sorted(set(value) - set(node.get("properties", {})))
        return f"{what if field else 'the object'} has no field(s) {', '.join(map(str, unknown))}"
    # Any other keyword: fastjsonschema's sentence, with its name for the value replaced by ours.
    return error.message.replace(error.name or "data", what, 1)
