"""
The registry's handlers plug into the link's real outbox and inbox
unchanged: the seam (L{IOutbox}) fits, and a command travels through the
real inbox into the registry and out of the real outbox as events.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from relay.cloud import registry, sync
from relay.cloud.registry.component import build_registry
from relay.config import LinkConfig
from relay.health import Health
from relay.link import inbox as inbox_module
from relay.link import outbox as outbox_module
from relay.link.bridge import ILinkEnd, build_link
from relay.link.catalogue import Catalogue
from relay.link.envelope import Envelope, to_edge
from relay.metrics import Metrics
from relay.replication import IOutbox
from relay.sync_messages import register_types, sync_catalogue
from relay.testing.db import SynchronousDatabase
from relay.testing.registry import RecordedEffects
from relay.testing.sync import SCHEMA as FAKE_LINK_SCHEMA
from relay.testing.sync import FakeLink, FakeOutbox


def test_fake_and_real_outbox_provide_the_seam(tmp_path: Path) -> None:
    db = SynchronousDatabase(tmp_path / "x.db", [outbox_module.SCHEMA])
    # The link does not declare relay.replication's seam; its methods must fit it.
    verifyObject(IOutbox, outbox_module.Outbox(db, Clock(), Metrics(), source="cloud"), tentative=True)
    verifyObject(IOutbox, FakeOutbox("cloud", Clock()))


def test_a_command_through_the_real_inbox_and_outbox(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(1_764_000_000)
    db = SynchronousDatabase(
        tmp_path / "cloud.db", [outbox_module.SCHEMA, inbox_module.SCHEMA, registry.SCHEMA, sync.SCHEMA]
    )
    catalogue = Catalogue()
    register_types(catalogue)
    metrics = Metrics()
    outbox = outbox_module.Outbox(db, clock, metrics, source="cloud")
    inbox = inbox_module.Inbox(db, clock, catalogue, metrics, queue="relay.to-cloud")
    # The registry's builder, given the real outbox and inbox as its link.
    component = build_registry(clock, db, SimpleNamespace(outbox=outbox, inbox=inbox), RecordedEffects())
    the_registry = component.registry
    alice = db.run_now(the_registry.add_user, "alice", "$scrypt$x")

    hello = Envelope(type="sync.hello", source="edge:e1", time=0.0,
                     body={"edge": "e1", "applied": 0, "pending": [], "snapshot": False})
    assert _receive(inbox, hello) == "applied"
    command = Envelope(type="project.create", source="edge:e1", time=0.0, body={
        "command_id": uuid.uuid4().hex, "actor": {"user_id": alice["id"], "via": "session"},
        "project_id": uuid.uuid4().hex, "name": "Apollo", "description": "",
    })
    assert _receive(inbox, command) == "applied"
    assert "Apollo" in [p["name"] for p in db.run_now(the_registry.projects)]
    db.run_now(sync.sequence)
    db.run_now(component.publisher.publish)
    queued = db.run_now(lambda c: c.execute("SELECT queue, type FROM outbox ORDER BY position").fetchall())
    assert [tuple(r) for r in queued] == [(to_edge("e1"), "sync.snapshot"), (to_edge("e1"), "sync.events")]
    # A malformed command is a dead letter, not a crash.
    bad = Envelope(type="project.create", source="edge:e1", time=0.0, body={"name": "x"})
    assert _receive(inbox, bad) == "dead"


def _receive(inbox: inbox_module.Inbox, message: Envelope) -> str:
    d: Deferred[str] = inbox.receive(message.to_bytes())
    results: list[str] = []
    d.addBoth(results.append)
    return results[0]


def test_bridge_and_fake_link_provide_the_builders_seam(tmp_path: Path) -> None:
    db = SynchronousDatabase(tmp_path / "x.db", [outbox_module.SCHEMA, inbox_module.SCHEMA, FAKE_LINK_SCHEMA])
    clock = Clock()
    metrics = Metrics()
    bridge = build_link(
        LinkConfig(), clock, db, metrics, Health(clock, "cloud", metrics), sync_catalogue(), source="cloud",
        consume="relay.to-cloud",
    )
    verifyObject(ILinkEnd, bridge)
    assert "sync.hello" in bridge.catalogue
    assert not bridge.connected()
    fake = FakeLink("cloud", db, bridge.catalogue, clock)
    verifyObject(ILinkEnd, fake)
    ups: list[int] = []
    fake.when_up(lambda: ups.append(1))
    assert not fake.connected()
    fake.come_up()
    assert fake.connected() and ups == [1]
