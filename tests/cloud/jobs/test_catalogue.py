"""
The catalogue of job kinds: published from the configuration into the
registry's C{job_kinds}, carried to the edges by sync (events, snapshots),
converging after restarts and configuration changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from relay.cloud import sync
from relay.cloud.config import JobsSection
from relay.cloud.jobs.catalogue import CataloguePublication, entries
from relay.cloud.jobs.component import build_jobs
from relay.cloud.jobs.kinds import JobKind
from relay.edge.replica.kinds import job_kinds
from relay.jobkinds import CatalogueEntry
from relay.link.envelope import Envelope
from relay.testing.registry import CloudSide, EdgeSide
from relay.testing.sync import FakeOutbox

SYNTH = JobKind(
    command=("relay-job-synth", "--top={top}", "{inputs}"), description="Synthesis.", min_inputs=1,
    parameters={"type": "object", "additionalProperties": False,
                "properties": {"top": {"type": "string", "pattern": "^[A-Za-z_]+$"}}},
)
CHECKSUM = JobKind(command=("relay-job-checksum", "{inputs}"), description="Checksums.", min_inputs=1)


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1_764_000_000)
    return clock


@pytest.fixture
def cloud(tmp_path: Path, clock: Clock) -> Iterator[CloudSide]:
    side = CloudSide(tmp_path / "cloud.db", clock)
    yield side
    side.close()


@pytest.fixture
def edge(tmp_path: Path, clock: Clock) -> Iterator[EdgeSide]:
    side = EdgeSide("e1", tmp_path / "edge.db", clock)
    yield side
    side.close()


def catch_up(edge: EdgeSide, cloud: CloudSide) -> None:
    """
    The edge says hello; every answer of the cloud is delivered.
    """
    edge.tick(hello=True)
    for _, hello in edge.db.run_now(FakeOutbox.take):
        cloud.inbox.deliver(hello)
    for _, answer in cloud.run(FakeOutbox.take):
        edge.inbox.deliver(answer)


def events_since(cloud: CloudSide, after: int) -> Envelope:
    return Envelope(type="sync.events", source="cloud", time=0.0,
                    body={"events": cloud.run(sync.events, after, cloud.run(sync.sequence)),
                          "head": cloud.run(sync.sequence)})


def shown(edge: EdgeSide) -> dict[str, Any]:
    return {kind.name: kind for kind in edge.db.run_now(job_kinds)}


def test_the_entry_has_what_the_edge_checks_and_nothing_of_the_command() -> None:
    entry = SYNTH.catalogue_entry("synth")
    assert entry == CatalogueEntry(
        "synth", "Synthesis.", SYNTH.parameters, min_inputs=1, max_inputs=100, timeout=3600.0, arguments=("top",),
    )
    assert "relay-job-synth" not in repr(entry.to_wire())
    assert CatalogueEntry.from_wire(entry.to_wire()) == entry
    assert set(entry.public()) == {"name", "description", "parameters", "min_inputs", "max_inputs", "timeout"}


def test_publishing_logs_only_what_changed(cloud: CloudSide) -> None:
    kinds = {"synth": SYNTH, "checksum": CHECKSUM}
    assert cloud.publish_kinds(*entries(kinds)) == 2
    head = cloud.run(sync.sequence)
    assert [e["kind"] for e in cloud.run(sync.events, 0, head)] == ["job_kind.put", "job_kind.put"]
    # A restart with the same configuration: nothing to tell anyone.
    assert cloud.publish_kinds(*entries(kinds)) == 0
    assert cloud.run(sync.sequence) == head
    # The same kind written differently (an int timeout, a tuple) is the same.
    same = JobKind(command=CHECKSUM.command, description="Checksums.", min_inputs=1, timeout=3600)  # type: ignore[arg-type]
    assert cloud.publish_kinds(*entries({"synth": SYNTH, "checksum": same})) == 0


def test_events_bring_the_catalogue_and_its_changes_to_the_edge(cloud: CloudSide, edge: EdgeSide) -> None:
    catch_up(edge, cloud)
    assert shown(edge) == {}
    cloud.publish_kinds(*entries({"synth": SYNTH, "checksum": CHECKSUM}))
    edge.inbox.deliver(events_since(cloud, 0))
    assert sorted(shown(edge)) == ["checksum", "synth"]
    assert shown(edge)["synth"] == SYNTH.catalogue_entry("synth")
    # The configuration changes: checksum removed, synth's schema changed.
    stricter = JobKind(command=SYNTH.command, description="Synthesis, top required.", min_inputs=1,
                       parameters={**SYNTH.parameters, "required": ["top"]})
    applied = cloud.run(sync.sequence)
    assert cloud.publish_kinds(*entries({"synth": stricter})) == 2
    edge.inbox.deliver(events_since(cloud, applied))
    assert list(shown(edge)) == ["synth"]
    assert shown(edge)["synth"].parameters["required"] == ["top"]
    assert shown(edge)["synth"].description == "Synthesis, top required."
    assert edge.dump() == cloud.dump()


def test_an_edge_that_was_away_converges_from_a_snapshot(cloud: CloudSide, edge: EdgeSide) -> None:
    """
    The edge was offline while the cloud restarted twice with other kinds,
    and the log it missed is pruned: its snapshot has the catalogue as it is.
    """
    cloud.publish_kinds(*entries({"synth": SYNTH, "checksum": CHECKSUM}))
    catch_up(edge, cloud)
    assert sorted(shown(edge)) == ["checksum", "synth"]
    edge.restart()
    cloud.publish_kinds(*entries({"checksum": CHECKSUM}))
    cloud.publish_kinds(*entries({"checksum": CHECKSUM, "lint": CHECKSUM}))
    cloud.run(sync.prune, 0)
    catch_up(edge, cloud)
    assert sorted(shown(edge)) == ["checksum", "lint"]
    assert edge.dump() == cloud.dump()
    # And a restarted edge keeps what it has.
    edge.restart()
    assert sorted(shown(edge)) == ["checksum", "lint"]


class FailingOnce:
    """
    A database whose first transaction fails (the database was not up yet).
    """

    def __init__(self, cloud: CloudSide) -> None:
        self._cloud = cloud
        self.calls = 0

    def run(self, work: Any, *args: Any) -> Deferred[Any]:
        self.calls += 1
        if self.calls == 1:
            return fail(ConnectionError("the database is not up yet"))
        return self._cloud.db.run(work, *args)


def test_publication_on_start_tries_again_until_it_is_done(cloud: CloudSide, clock: Clock) -> None:
    db = FailingOnce(cloud)
    publication = CataloguePublication(clock, db, cloud.log, {"synth": SYNTH}, retry=5.0)  # type: ignore[arg-type]
    publication.startService()
    assert db.calls == 1 and not publication.published.called
    assert cloud.run(lambda c: c.execute("SELECT count(*) FROM job_kinds").fetchone()[0]) == 0
    clock.advance(5)
    assert db.calls == 2 and publication.published.called
    assert cloud.run(lambda c: [tuple(r) for r in c.execute("SELECT name FROM job_kinds")]) == [("synth",)]
    publication.stopService()
    assert clock.getDelayedCalls() == []


def test_a_stopped_publication_does_not_try_again(cloud: CloudSide, clock: Clock) -> None:
    db = FailingOnce(cloud)
    publication = CataloguePublication(clock, db, cloud.log, {"synth": SYNTH})  # type: ignore[arg-type]
    publication.startService()
    publication.stopService()
    assert clock.getDelayedCalls() == []


class Types:
    def register(self, *args: Any, **kwargs: Any) -> None:
        pass


class LinkBridge:
    """
    The part of L{relay.link.bridge.Bridge} that L{build_jobs} uses.
    """

    catalogue = Types()
    outbox = link = None

    def __init__(self) -> None:
        self.inbox = self
        self.handlers: dict[str, Any] = {}

    def register(self, type: str, handler: Any) -> None:
        self.handlers[type] = handler

    def when_up(self, hook: Any) -> None:
        pass


@pytest.mark.parametrize(("role", "publishes"), [("both", True), ("dispatch", True), ("worker", False)])
def test_the_processes_that_queue_jobs_publish_the_catalogue(
    role: str, publishes: bool, cloud: CloudSide, clock: Clock, tmp_path: Path
) -> None:
    config = JobsSection(role=role, kinds={"synth": SYNTH})  # type: ignore[arg-type]
    jobs = build_jobs(config, clock, cloud.db, LinkBridge(), cloud.registry, None, None, tmp_path)  # type: ignore[arg-type]
    assert any(isinstance(service, CataloguePublication) for service in jobs) is publishes
