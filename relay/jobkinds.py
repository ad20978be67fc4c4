"""
What the cloud and the edges both know of a job kind, and the checks both
make on a job request before anything runs.

The cloud's configuration defines each kind (L{relay.cloud.jobs.kinds});
the part an edge needs to check a request, the L{CatalogueEntry}, travels
to the edges through sync (the replicated table C{job_kinds}).  The same
functions check a request at the edge, before anything is queued, and
again in the cloud, which never trusts an edge: L{check_request} (the
parameters against the kind's JSON Schema, the number of inputs, and the
values that become arguments of the command) and L{check_inputs} (every
input is a stored file of the job's project).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from jsonschema import Draft202012Validator

#: A kind's name (the C{NAME} of C{[jobs.kinds.NAME]}).
KIND_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")
#: The longest description a kind may have (it travels in sync events).
MAX_DESCRIPTION = 2000


class BadRequest(Exception):
    """
    A job request its kind refuses; C{str()} says why, for the user, and
    C{code} is the refusal's code (L{relay.permissions.Refused}).
    """

    code = "invalid"


class UnknownInput(BadRequest):
    """
    An input is not a file of the job's project (or no file at all).
    """

    code = "not_found"


@dataclass(frozen=True)
class CatalogueEntry:
    """
    One kind as the edges are told of it: no command, no limits.

    @ivar arguments: the parameters that become (part of) an argument of
        the command; their values must not pass for options or paths
        outside the work directory.
    """

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    min_inputs: int = 0
    max_inputs: int = 100
    timeout: float = 3600.0
    arguments: tuple[str, ...] = ()

    @cached_property
    def validator(self) -> Draft202012Validator:
        return Draft202012Validator(self.parameters)

    def check(self, parameters: Mapping[str, Any], inputs: Sequence[str]) -> None:
        """
        L{check_request} with this kind's rules.

        @raise BadRequest: with the reason.
        """
        check_request(self.validator, self.min_inputs, self.max_inputs, self.arguments, parameters, inputs)

    def to_wire(self) -> dict[str, Any]:
        """
        The entry as a row of the replicated C{job_kinds} table.
        """
        return {
            "name": self.name, "description": self.description, "parameters": self.parameters,
            "arguments": list(self.arguments), "min_inputs": self.min_inputs, "max_inputs": self.max_inputs,
            "timeout": float(self.timeout),
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> CatalogueEntry:
        return cls(
            name=data["name"], description=data["description"], parameters=dict(data["parameters"]),
            min_inputs=int(data["min_inputs"]), max_inputs=int(data["max_inputs"]),
            timeout=float(data["timeout"]), arguments=tuple(data["arguments"]),
        )

    def public(self) -> dict[str, Any]:
        """
        What C{GET /api/v1/job-kinds} shows of the kind.
        """
        return {
            "name": self.name, "description": self.description, "parameters": self.parameters,
            "min_inputs": self.min_inputs, "max_inputs": self.max_inputs, "timeout": self.timeout,
        }


def check_request(
    validator: Draft202012Validator, min_inputs: int, max_inputs: int, arguments: Sequence[str],
    parameters: Mapping[str, Any], inputs: Sequence[str],
) -> None:
    """
    Refuse a request whose parameters fail the schema, whose input count is
    out of bounds, or whose values that become arguments could escape the
    work directory or pass for options.

    @param arguments: the names of the parameters that become arguments.
    @raise BadRequest: with the reason.
    """
    if not isinstance(parameters, Mapping):
        raise BadRequest("parameters: must be an object")
    error = next(iter(sorted(validator.iter_errors(dict(parameters)), key=lambda e: [str(p) for p in e.path])), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        raise BadRequest(f"parameter {where}: {error.message}" if where else f"parameters: {error.message}")
    if not min_inputs <= len(inputs) <= max_inputs:
        raise BadRequest(f"this kind takes {min_inputs} to {max_inputs} input files, got {len(inputs)}")
    for name in arguments:
        if name in parameters:
            check_value(name, parameters[name])


def check_value(name: str, value: Any) -> None:
    """
    Refuse a parameter value that becomes an argument when it is not a
    plain string, number or boolean, or could pass for an option (a leading
    C{-}), an absolute path or a way up (C{..}), or holds control
    characters.

    @raise BadRequest: with the reason.
    """
    if isinstance(value, bool | int | float):
        return
    if not isinstance(value, str):
        raise BadRequest(f"parameter {name}: must be a string, a number or true/false")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise BadRequest(f"parameter {name}: control characters are not allowed")
    if value.startswith("-"):
        raise BadRequest(f"parameter {name}: may not start with '-' (it would pass for an option)")
    if value.startswith("/") or ".." in re.split(r"[/\\]", value):
        raise BadRequest(f"parameter {name}: may not be an absolute path or contain '..'")


#: A file as L{check_inputs} needs it: its project and whether the cloud
#: stores it (C{None}: stored), or why not.
InputFile = tuple[str, str | None]


def check_inputs(project_id: str, inputs: Sequence[str], lookup: Callable[[str], InputFile | None]) -> None:
    """
    Refuse inputs that are not files of the project, or not stored in the
    cloud yet.

    @param lookup: a file id's project and, if the file is not stored in
        the cloud, why not (in words); C{None} for no such file.
    @raise UnknownInput: an input is not the project's.
    @raise BadRequest: an input is not stored yet.
    """
    for file_id in inputs:
        found = lookup(file_id) if isinstance(file_id, str) else None
        if found is None or found[0] != project_id:
            raise UnknownInput(f"input file {file_id} is not in this project")
        if found[1] is not None:
            raise BadRequest(f"input file {file_id} is not stored in the cloud yet: {found[1]}")
