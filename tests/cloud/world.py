"""
A cloud and its edges on an in-process link, for sync tests.
"""

from __future__ import annotations

import random
from pathlib import Path

from twisted.internet.task import Clock

from relay.link.envelope import to_edge
from relay.testing.registry import CloudSide, EdgeSide
from relay.testing.sync import InProcessLink


class World:
    """
    One cloud, any number of edges, one link with duplicates and
    reordering.  C{dedupe=False} turns the fake inboxes' deduplication off,
    so that the handlers' own idempotency is what is tested.
    """

    def __init__(
        self, tmp_path: Path, clock: Clock, seed: int = 0, cloud_target: Path | str | None = None, *,
        duplicate: float = 0.1, dedupe: bool = True,
    ) -> None:
        self.clock = clock
        self.dedupe = dedupe
        self.link = InProcessLink(random.Random(seed), reorder=True, duplicate=duplicate)
        self.cloud = CloudSide(cloud_target or tmp_path / "cloud.db", clock, self.link, dedupe=dedupe)
        self.tmp_path = tmp_path
        self.edges: dict[str, EdgeSide] = {}

    def edge(self, edge_id: str) -> EdgeSide:
        edge = EdgeSide(edge_id, self.tmp_path / f"{edge_id}.db", self.clock, self.link, dedupe=self.dedupe)
        self.edges[edge_id] = edge
        return edge

    def settle(self, rounds: int = 30) -> None:
        """
        Deliver everything, with the publisher and the edges' timers
        running, until nothing moves.
        """
        said_hello = False
        for _ in range(rounds):
            self.link.run(between=self.cloud.publish)
            self.clock.advance(31)
            if any([edge.tick() for edge in self.edges.values()]) or self.link.in_flight:
                continue
            self.cloud.publish()
            if self.link.collect():
                continue
            if said_hello:
                return
            # Quiet.  An edge whose queue lost the last events cannot know
            # it is behind until its periodic hello: let those come due.
            self.clock.advance(601)
            for edge in self.edges.values():
                edge.tick()
            said_hello = True
        raise AssertionError("did not settle")

    def sent_to(self, edge_id: str, type: str) -> int:
        return self.link.delivered.get(to_edge(edge_id), []).count(type)

    def close(self) -> None:
        self.cloud.close()
        for edge in self.edges.values():
            edge.close()
