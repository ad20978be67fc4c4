"""
The catalogue of message types: for each type, the body's JSON schema.

Each component registers the types it sends or receives when the service
tree is built; an incoming message whose type is unknown, or whose body does
not match its schema, is a poison message and is dead-lettered with the
validation error as its reason.  The catalogue itself is written down in
C{docs/messages.md}.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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

    def register(
        self, name: str, schema: Mapping[str, Any], *, version: int = 1, description: str = ""
    ) -> MessageType:
        Draft202012Validator.check_schema(schema)
        kind = MessageType(name, version, schema, description)
        existing = self._types.get((name, version))
        if existing is not None and existing[0] != kind:
            raise ValueError(f"message type {name} v{version} registered twice, differently")
        self._types[(name, version)] = (kind, Draft202012Validator(schema))
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
        entry = self._types.get((message.type, message.version))
        if entry is None:
            raise UnknownType(f"unknown message type {message.type!r} version {message.version}")
        error = best_match(entry[1].iter_errors(message.body))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "body"
            raise InvalidBody(f"{message.type}: {where}: {error.message}")
