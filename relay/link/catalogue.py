"""
The catalogue of message types: for each type, the body's JSON schema.

Each component registers the types it sends or receives when the service
tree is built; an incoming message whose type is unknown, or whose body does
not match its schema, is a poison message and is dead-lettered with the
validation error as its reason.  The catalogue itself is written down in
C{docs/messages.md}.

Every message is validated on the inbox's hot path, so each schema is also
compiled to Python by fastjsonschema (about a tenth of jsonschema's time per
message) when it uses only keywords that mean the same in JSON Schema
draft 7, which fastjsonschema implements, as in 2020-12, which relay's
schemas are written in (L{SAME_IN_DRAFT_7}).  jsonschema stays the judge:
it checks the schemas, validates those that cannot be compiled, and words
the error when the compiled validator rejects a body.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from relay.link.envelope import Envelope


class UnknownType(LookupError):
    """
    No schema is registered for a message's type (or its version).
    """


class InvalidBody(ValueError):
    """
    A message's body does not match its type's schema.
    """


#: Keywords whose meaning is the same in draft 7 as in 2020-12 (C{items} is
#: a schema in both: the array form is not valid 2020-12).  Schemas that use
#: others (C{$ref}, C{prefixItems}, C{unevaluatedProperties}, ...) are
#: validated by jsonschema alone.
SAME_IN_DRAFT_7 = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "patternProperties",
        "propertyNames", "items", "enum", "const", "minimum", "maximum", "exclusiveMinimum",
        "exclusiveMaximum", "multipleOf", "minLength", "maxLength", "pattern", "minItems",
        "maxItems", "uniqueItems", "minProperties", "maxProperties", "anyOf", "oneOf", "allOf",
        "not", "if", "then", "else", "format", "title", "description", "default", "examples",
    }
)
_SUBSCHEMA = ("items", "additionalProperties", "not", "propertyNames", "if", "then", "else")
_SUBSCHEMA_MAPS = ("properties", "patternProperties")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf")


def compilable(schema: Any) -> bool:
    """
    Whether C{schema} and its subschemas use only L{SAME_IN_DRAFT_7}.
    """
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, Mapping) or not set(schema) <= SAME_IN_DRAFT_7:
        return False
    return (
        all(compilable(schema[k]) for k in _SUBSCHEMA if k in schema)
        and all(compilable(sub) for k in _SUBSCHEMA_MAPS for sub in schema.get(k, {}).values())
        and all(compilable(sub) for k in _SUBSCHEMA_LISTS for sub in schema.get(k, []))
    )


def _compiled(schema: Mapping[str, Any]) -> Callable[[Any], object] | None:
    if not compilable(schema):
        return None
    # Formats are annotations in 2020-12 (jsonschema does not assert them
    # unless asked): the compiled validator must not either.
    return fastjsonschema.compile(dict(schema), use_formats=False)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class MessageType:
    name: str
    version: int
    schema: Mapping[str, Any]
    description: str = ""


class Catalogue:
    """
    Message types by name and version, with their validators.
    """

    def __init__(self) -> None:
        self._types: dict[tuple[str, int], tuple[MessageType, Draft202012Validator]] = {}
        self._fast: dict[tuple[str, int], Callable[[Any], object]] = {}

    def register_all(self, schemas: Mapping[str, tuple[Mapping[str, Any], str]]) -> None:
        """Register each C{name: (schema, description)} (version 1)."""
        for name, (schema, description) in schemas.items():
            self.register(name, schema, description=description)

    def register(
        self, name: str, schema: Mapping[str, Any], *, version: int = 1, description: str = ""
    ) -> MessageType:
        Draft202012Validator.check_schema(schema)
        kind = MessageType(name, version, schema, description)
        existing = self._types.get((name, version))
        if existing is not None and existing[0] != kind:
            raise ValueError(f"message type {name} v{version} registered twice, differently")
        self._types[(name, version)] = (kind, Draft202012Validator(schema))
        fast = _compiled(schema)
        if fast is not None:
            self._fast[(name, version)] = fast
        return kind

    def __contains__(self, name: str) -> bool:
        return any(n == name for n, _ in self._types)

    def types(self) -> list[MessageType]:
        return [kind for kind, _ in self._types.values()]

    def validate(self, message: Envelope) -> None:
        """
        @raise UnknownType: no schema for the type and version.
        @raise InvalidBody: the body does not match; the message says where.
        """
        key = (message.type, message.version)
        fast = self._fast.get(key)
        if fast is not None:
            try:
                fast(message.body)
                return
            except fastjsonschema.JsonSchemaValueException:
                pass  # jsonschema says why, in its words
        entry = self._types.get(key)
        if entry is None:
            raise UnknownType(f"unknown message type {message.type!r} version {message.version}")
        error = best_match(entry[1].iter_errors(message.body))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "body"
            raise InvalidBody(f"{message.type}: {where}: {error.message}")
