"""
relay.edge.events.EventHub: events reach the users they concern, in order,
and a reconnecting client gets what it missed or is told to reload.
"""

from __future__ import annotations

from relay.edge.events import EVERYONE, Event, EventHub


def test_subscribers_get_their_own_and_everyones_events_in_order() -> None:
    hub = EventHub()
    alice: list[Event] = []
    bob: list[Event] = []
    hub.subscribe("alice", alice.append)
    hub.subscribe("bob", bob.append)
    hub.publish("alice", "upload.progress", {"offset": 1})
    hub.publish(EVERYONE, "replica.changed", {"tables": ["projects"]})
    hub.publish("bob", "upload.progress", {"offset": 2})
    hub.publish("alice", "upload.progress", {"offset": 3})
    assert [(e.kind, e.data) for e in alice] == [
        ("upload.progress", {"offset": 1}),
        ("replica.changed", {"tables": ["projects"]}),
        ("upload.progress", {"offset": 3}),
    ]
    assert [e.id for e in bob] == [2, 3]


def test_unsubscribing_stops_delivery() -> None:
    hub = EventHub()
    seen: list[Event] = []
    unsubscribe = hub.subscribe("alice", seen.append)
    hub.publish("alice", "a", {})
    unsubscribe()
    unsubscribe()  # twice is harmless
    hub.publish("alice", "b", {})
    assert [e.kind for e in seen] == ["a"]
    assert hub.subscribers == 0


def test_a_failing_subscriber_does_not_stop_the_others() -> None:
    hub = EventHub()
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("gone")

    hub.subscribe("alice", broken)
    hub.subscribe("alice", seen.append)
    hub.publish("alice", "a", {})
    assert [e.kind for e in seen] == ["a"]


def test_since_replays_what_a_client_missed_within_the_history() -> None:
    hub = EventHub(history=3)
    for n in range(5):
        hub.publish("alice" if n % 2 == 0 else "bob", "n", {"n": n})
    replay = hub.since("alice", 3)
    assert replay is not None
    assert [e.data["n"] for e in replay] == [4]
    # Event 2 fell out of the history: the client must reload.
    assert hub.since("alice", 1) is None
    # An id from an earlier run of the edge (ahead of this one).
    assert hub.since("alice", 99) is None
    # Up to date: nothing to replay.
    assert list(hub.since("alice", 5) or ["missing"]) == []


def test_since_on_a_fresh_hub() -> None:
    hub = EventHub()
    assert list(hub.since("alice", 0) or ["missing"]) == []


def test_an_earlier_run_s_ids_get_a_reset_however_many_events_came_since() -> None:
    # Runs start their ids from the clock: the earlier run's ids are below.
    earlier = EventHub(first_id=1_000)
    for n in range(50):
        earlier.publish("alice", "x", {"n": n})
    now = EventHub(first_id=2_000)
    for n in range(100):
        now.publish("alice", "x", {"n": n})
    assert now.since("alice", earlier.last_id) is None
    # A client that started with this run is served as before.
    assert [e.data["n"] for e in now.since("alice", 2_097) or []] == [98, 99]
    assert list(EventHub(first_id=2_000).since("alice", 1_999) or ["missing"]) == []
