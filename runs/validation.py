"""Request bodies checked against the LangGraph API's published JSON schemas.

``schema/langgraph_api.json`` holds the request/response component schemas of the Agent Server's
OpenAPI document (the interface contract, not its implementation). Violations become 422s worded
like the real server's validator: ``"x" is a required property\\n\\nFailed validating ...``.
"""

from __future__ import annotations

import json
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from project.api.errors import INVALID_JSON
from runs.errors import Unprocessable

SCHEMA_FILE = Path(__file__).resolve().parent / "schema" / "langgraph_api.json"


@lru_cache(maxsize=1)
def components() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text())["components"]["schemas"]


_COMPONENT_REF = "#/components/schemas/"
# Values that are data, not schemas: a "$ref" key inside them is not a reference.
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples", "example"})


def _inlined(schema: Any, seen: tuple[str, ...] = ()) -> Any:
    """``schema`` with each lone ``{"$ref": "#/components/schemas/X"}`` replaced by X itself
    (except in a cycle). Resolving a reference at every validation was half of the check's cost;
    the errors are the same, as their schema paths leave out "$ref" anyway."""
    if isinstance(schema, list):
        return [_inlined(item, seen) for item in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if len(schema) == 1 and isinstance(ref, str) and ref.startswith(_COMPONENT_REF):
        name = ref[len(_COMPONENT_REF):]
        if name in seen or name not in components():
            return schema
        return _inlined(components()[name], (*seen, name))
    return {key: value if key in _DATA_KEYWORDS else _inlined(value, seen) for key, value in schema.items()}


@cache
def _validator(name: str) -> Draft202012Validator:
    # The components stay beside the inlined schema for the references left: cycles.
    root = {**_inlined(components()[name], (name,)), "components": {"schemas": components()}}
    return Draft202012Validator(root)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _message(error: ValidationError, schema: str) -> str:
    # Both are Unset only on errors jsonschema made up itself, never on a validator's.
    validator_value: Any = error.validator_value
    instance: Any = error.instance
    if error.validator == "required":
        missing = [name for name in validator_value if name not in (instance or {})]
        head = f'"{missing[0]}" is a required property' if missing else error.message
    elif error.validator == "enum":
        options = ", ".join(_compact(option) for option in validator_value)
        head = f"{_compact(instance)} is not one of [{options}]"
    elif error.validator == "type":
        wanted = validator_value
        wanted = " or ".join(f'"{w}"' for w in wanted) if isinstance(wanted, list) else f'"{wanted}"'
        head = f"{_compact(instance)} is not of type {wanted}"
    else:
        head = error.message
    parts = ["components", "schemas", schema]
    parts += [str(part) for part in list(error.relative_schema_path)[:-1] if part != "$ref"]
    path = "".join(f'["{part}"]' for part in parts)
    return (
        f'{head}\n\nFailed validating "{error.validator}" in schema{path}\n\n'
        f"On instance:\n    {_compact(error.instance)}"
    )


# The schema sets no upper bound on a search's offset, but the databases' OFFSET is a signed 64-bit
# integer: PostgreSQL answered a larger one with an error (a fuzz finding), so say so with a 422.
MAX_OFFSET = 2**63 - 1


def validate_body(data: Any, schema: str) -> Any:
    """``data`` if it matches component ``schema``; else a 422 naming the first violation."""
    validator = _validator(schema)
    error = next(iter(sorted(validator.iter_errors(data), key=lambda e: (len(e.path), e.path))), None)
    if error is not None:
        raise Unprocessable(_message(error, schema))
    offset = data.get("offset") if isinstance(data, dict) else None
    if isinstance(offset, int) and not isinstance(offset, bool) and offset > MAX_OFFSET:
        raise Unprocessable(f'"offset" {offset} is greater than the maximum of {MAX_OFFSET}')
    return data


def parse_json_body(raw: bytes, schema: str | None = None, *, required: bool = True) -> Any:
    """A request body as JSON (whatever its content type, as the real server reads it), checked
    against API component ``schema``; an empty body is ``{}`` unless ``required``."""
    if not raw.strip():
        if required:
            raise Unprocessable(INVALID_JSON)
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
        except ValueError:
            raise Unprocessable(INVALID_JSON) from None
    if schema is not None:
        validate_body(data, schema)
    return data
