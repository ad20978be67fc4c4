"""
schemathesis against a real edge (C{twistd relay-edge}, with a real cloud,
RabbitMQ and an S3 server: L{relay.testing.web_world}), from the document
the edge serves at C{/api/v1/openapi.json}, as a user with an API key:
every operation with generated input, valid and invalid (the invalid must
be a clear 4xx in the one error shape), then stateful sequences along the
document's links (a project created, then read; a key made, then revoked;
a job submitted, then read).  No answer may be a 5xx, and every answer
must match the document: its status, its content type, its body's schema
(errors included: the one shape with a code).

Bounded (a few examples per operation, short sequences) to stay well
under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from relay.testing.web_world import WebWorld

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
#: Not for a generator: a stream that never ends, and a route that would
#: end the session used (the key's caller has none, so it is only 401).
SKIPPED = ["/api/v1/events"]
SETTINGS = dict(
    deadline=None, database=None, derandomize=True,
    suppress_health_check=list(HealthCheck), phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebWorld]:
    world = WebWorld(Path(tmp_path_factory.mktemp("schemathesis")), projects=1, files=3).start()
    # Before the generator's failed logins from this address throttle it.
    world.session = world.login()  # type: ignore[attr-defined]
    try:
        yield world
    finally:
        world.stop()


@pytest.fixture(scope="module")
def schema(world: WebWorld) -> Any:
    loaded = schemathesis.openapi.from_url(world.base + "/api/v1/openapi.json")
    loaded.config.update(base_url=world.base)
    return loaded.exclude(path=SKIPPED)


def test_every_operation(world: WebWorld, schema: Any) -> None:
    headers = {"Authorization": f"Bearer {world.api_key}"}
    tested = 0
    modes = {GenerationMode.POSITIVE: 0, GenerationMode.NEGATIVE: 0}
    for result in schema.get_all_operations():
        operation = result.ok()
        # Valid input, and input the document says is invalid (which must
        # be a clear error in the one shape, never a 5xx).
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis.settings(max_examples=5, **SETTINGS)
            def run(case: Any) -> None:
                case.call_and_validate(headers=headers, checks=CHECKS, timeout=10)

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                # Nothing to make invalid (no parameters, no body).
                assert mode is GenerationMode.NEGATIVE, operation.label
                continue
            modes[mode] += 1
        tested += 1
    assert tested >= 30
    assert modes[GenerationMode.POSITIVE] == tested and modes[GenerationMode.NEGATIVE] >= 15, modes
    # The key still works: nothing the generator sent broke the caller.
    assert world.get("/api/v1/me")[0] == 200


def test_stateful(world: WebWorld, schema: Any) -> None:
    """
    As a browser would, with a session and its CSRF token (a sequence may
    well revoke the API keys it lists, the one used above among them).
    """
    headers = world.session  # type: ignore[attr-defined]
    base = schema.exclude(path="/api/v1/logout").as_state_machine()

    class Machine(base):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": headers, "timeout": 10}

        def call(self, case: Any, **kwargs: Any) -> Any:
            response = case.call(**kwargs)
            calls.append((case.method, case.operation.path, response.status_code))
            return response

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS)

    calls: list[tuple[str, str, int]] = []
    Machine.run(settings=hypothesis.settings(max_examples=40, stateful_step_count=6, **SETTINGS))
    # Sequences followed the links: something made, then used.
    made = {(method, path) for method, path, status in calls if status == 202}
    assert {("POST", "/api/v1/projects"), ("POST", "/api/v1/keys")} <= made, sorted(set(calls))
    used = {(m, p) for m, p, status in calls if status in (200, 202) and "{" in p}
    assert used, sorted(set(calls))
