"""
Job kinds: the argument list built from a request, and the requests a kind
refuses, whatever its schema lets through.
"""

from __future__ import annotations

import pytest

from relay.cloud.config import CloudConfig
from relay.cloud.jobs.kinds import BadRequest, JobKind
from relay.config import ConfigError, load
from tests.conftest import ROOT

LOOSE = JobKind(command=("tool", "--name={name}", "{inputs}", "{count}"), parameters={"type": "object"})


def test_each_placeholder_is_one_argument_and_inputs_expand() -> None:
    argv = LOOSE.argv({"name": "a b; rm -rf /", "count": 3}, ["inputs/000-x", "inputs/001-y"])
    assert argv == ["tool", "--name=a b; rm -rf /", "inputs/000-x", "inputs/001-y", "3"]


def test_an_argument_with_a_missing_optional_parameter_goes_whole() -> None:
    assert LOOSE.argv({}, ["inputs/000-x"]) == ["tool", "inputs/000-x"]


@pytest.mark.parametrize("value", ["-rf", "--output=/etc/passwd", "/etc/passwd", "../../x", "a/../b", "a\x00b", "a\nb"])
def test_values_that_escape_or_pass_for_options_are_refused(value: str) -> None:
    with pytest.raises(BadRequest):
        LOOSE.check({"name": value}, [])


def test_the_schema_is_enforced() -> None:
    kind = JobKind(command=("t", "{n}"), parameters={"type": "object", "properties": {"n": {"type": "integer"}},
                                                     "additionalProperties": False})
    kind.check({"n": 3}, [])
    with pytest.raises(BadRequest, match="parameter n"):
        kind.check({"n": "3"}, [])
    with pytest.raises(BadRequest, match="Additional properties"):
        kind.check({"m": 1}, [])


def test_input_counts() -> None:
    kind = JobKind(command=("t", "{inputs}"), min_inputs=1, max_inputs=2)
    with pytest.raises(BadRequest):
        kind.check({}, [])
    with pytest.raises(BadRequest):
        kind.check({}, ["a", "b", "c"])


def test_the_shipped_kinds_load(tmp_path: object) -> None:
    config = load(CloudConfig, ROOT / "etc" / "cloud.toml")
    assert sorted(config.jobs.kinds) == ["archive", "checksum", "synth"]
    synth = config.jobs.kinds["synth"]
    assert synth.argv({"top": "counter"}, ["inputs/000-c.v"]) == ["relay-job-synth", "--top=counter", "inputs/000-c.v"]
    with pytest.raises(BadRequest):
        synth.check({"top": "-o"}, ["f"])


def test_a_bad_kind_stops_startup_naming_it(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "cloud.toml"
    path.write_text('[jobs.kinds.x]\ncommand = ["t"]\nparameters = { type = "array" }\n')
    with pytest.raises(ConfigError, match="object"):
        load(CloudConfig, path)
    path.write_text('[jobs.kinds.x]\ncommand = ["t"]\nresults = ["../up"]\n')
    with pytest.raises(ConfigError, match="work directory"):
        load(CloudConfig, path)


def test_the_fake_effects_and_the_dispatch_provide_the_seam() -> None:
    from zope.interface.verify import verifyObject

    from relay.cloud.commands import ICommandEffects
    from relay.cloud.jobs.component import JobDispatch
    from relay.testing.registry import RecordedEffects

    verifyObject(ICommandEffects, RecordedEffects())
    verifyObject(ICommandEffects, JobDispatch({}, None))  # type: ignore[arg-type]
