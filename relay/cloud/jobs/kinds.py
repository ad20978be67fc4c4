"""
Job kinds: what an administrator lets people run, and how a request
becomes an argument list.

A kind is configured in the cloud's C{[jobs.kinds.NAME]} table, never by
users.  Its C{command} is a list of arguments; an argument may hold
C{{name}} placeholders for parameters, and the argument C{{inputs}} alone
stands for the job's input files (one argument each, paths inside the
work directory that relay chose).  A placeholder never splits or joins
arguments, and no shell ever sees them.  An argument whose placeholder
names an optional parameter the request left out is dropped whole
(C{"--top={top}"} disappears when no C{top} was given).

What the edges are told of a kind, and the checks of a request that both
sides make, are in L{relay.jobkinds}.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from relay.jobkinds import KIND_NAME, MAX_DESCRIPTION, BadRequest, CatalogueEntry, check_request

__all__ = ["INPUTS", "BadRequest", "JobKind", "KindLimits", "check_kind_names"]

_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
INPUTS = "{inputs}"


@dataclass(frozen=True)
class KindLimits:
    """
    The resource limits of one kind's runs (C{None}: not limited).
    """

    cpu_seconds: int | None = 3600
    memory_bytes: int | None = 4 << 30
    open_files: int | None = 1024
    #: The largest file a run may write (RLIMIT_FSIZE).
    file_bytes: int | None = 8 << 30
    #: How much of a run's output (stdout and stderr together) is kept.
    log_bytes: int = 16 << 20


@dataclass(frozen=True)
class JobKind:
    """
    One C{[jobs.kinds.NAME]} table.
    """

    command: tuple[str, ...]
    description: str = ""
    #: A JSON Schema (draft 2020-12) for the parameters, an object schema.
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    #: Seconds a run may take before it is stopped (timed out).
    timeout: float = 3600.0
    #: Runs (first one included) before the job fails for good when
    #: workers are lost.
    attempts: int = 3
    #: Glob patterns, relative to the work directory, of the result files.
    results: tuple[str, ...] = ()
    #: How many input files a request may name.
    min_inputs: int = 0
    max_inputs: int = 100
    limits: KindLimits = field(default_factory=KindLimits)

    def __post_init__(self) -> None:
        if not self.command:
            raise ValueError("jobs.kinds: command must name a program")
        try:
            Draft202012Validator.check_schema(self.parameters)
        except SchemaError as e:
            raise ValueError(f"jobs.kinds: parameters is not a valid JSON Schema: {e.message}") from None
        if self.parameters.get("type") != "object":
            raise ValueError("jobs.kinds: parameters must be a schema of type 'object'")
        try:
            json.dumps(self.parameters)
        except (TypeError, ValueError):
            raise ValueError("jobs.kinds: parameters must be plain JSON (no dates)") from None
        if len(self.description) > MAX_DESCRIPTION:
            raise ValueError(f"jobs.kinds: description has at most {MAX_DESCRIPTION} characters")
        if not 0 <= self.min_inputs <= self.max_inputs <= 1000:
            raise ValueError("jobs.kinds: expected 0 <= min_inputs <= max_inputs <= 1000")
        for pattern in self.results:
            if pattern.startswith("/") or ".." in pattern.split("/"):
                raise ValueError(f"jobs.kinds: result pattern {pattern!r} must stay inside the work directory")
        if not 1 <= self.attempts <= 20:
            raise ValueError(f"jobs.kinds: attempts must be 1 to 20, got {self.attempts}")
        if self.timeout <= 0:
            raise ValueError(f"jobs.kinds: timeout must be positive, got {self.timeout}")

    @property
    def validator(self) -> Draft202012Validator:
        return Draft202012Validator(self.parameters)

    def check(self, parameters: Mapping[str, Any], inputs: Sequence[str]) -> None:
        """
        Refuse a request whose parameters fail the schema, whose input
        count is out of bounds, or whose values could escape the work
        directory or pass for options (L{relay.jobkinds.check_request}).

        @raise BadRequest: with the reason.
        """
        check_request(self.validator, self.min_inputs, self.max_inputs, self.placeholders(), parameters, inputs)

    def placeholders(self) -> list[str]:
        return [name for argument in self.command for name in _PLACEHOLDER.findall(argument) if name != "inputs"]

    def argv(self, parameters: Mapping[str, Any], input_paths: Sequence[str]) -> list[str]:
        """
        The argument list for one run (after L{check}).
        """
        argv: list[str] = []
        for argument in self.command:
            if argument == INPUTS:
                argv.extend(input_paths)
                continue
            names = _PLACEHOLDER.findall(argument)
            if any(name not in parameters for name in names):
                continue  # an optional parameter left out: the argument goes
            argv.append(_PLACEHOLDER.sub(lambda m: _text(parameters[m.group(1)]), argument))
        return argv

    def catalogue_entry(self, name: str) -> CatalogueEntry:
        """
        What the edges are told of this kind (no command, no limits).
        """
        return CatalogueEntry(
            name=name, description=self.description, parameters=self.parameters,
            min_inputs=self.min_inputs, max_inputs=self.max_inputs, timeout=float(self.timeout),
            arguments=tuple(dict.fromkeys(self.placeholders())),
        )


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def check_kind_names(kinds: Mapping[str, JobKind]) -> None:
    for name in kinds:
        if not KIND_NAME.fullmatch(name):
            raise ValueError(f"jobs.kinds.{name}: a kind's name is lower-case letters, digits, '-' and '_'")
