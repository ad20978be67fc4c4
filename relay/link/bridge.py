"""
The link as one service: the broker connection, the topology, the outbox
pump and the inbox consumer, with their health and metrics.

Both processes build one L{Bridge}.  On every (re)connection it declares the
queues idempotently, hands the channel to the outbox (which republishes
everything unconfirmed) and starts consuming its own queue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from relay.config import LinkConfig
from relay.db import Database
from relay.health import Health
from relay.link.backoff import Backoff
from relay.link.catalogue import Catalogue
from relay.link.channel import Channel, Delivery, LinkDown
from relay.link.connection import LinkService
from relay.link.inbox import Inbox
from relay.link.outbox import Outbox
from relay.metrics import Metrics

#: Seconds between the outbox's rescans on a database several processes
#: write (L{Outbox}'s C{rescan_after}).
SHARED_RESCAN = 5.0
#: Seconds after which a process publishes another's message on such a
#: database (L{Outbox}'s C{takeover_after}).
SHARED_TAKEOVER = 10.0


class ILinkEnd(Interface):
    """
    What the components built on the link use of it: the builders of the
    registry, the replica, jobs and downloads take one.  L{Bridge} is the
    real one; L{relay.testing.sync.FakeLink} carries messages in process.
    """

    outbox = Attribute("The L{relay.link.outbox.IOutbox} messages leave by.")
    inbox = Attribute("The L{relay.link.inbox.IInbox} handlers register with.")
    catalogue = Attribute("The L{Catalogue} of the message types this process knows.")

    def when_up(hook: Callable[[], object]) -> None:
        """
        Call C{hook} every time the link comes (back) up.
        """

    def connected() -> bool:
        """
        Whether the broker connection is up now.
        """


def build_link(
    config: LinkConfig,
    reactor: Any,
    db: Database,
    metrics: Metrics,
    health: Health,
    catalogue: Catalogue,
    *,
    source: str,
    consume: str,
    declare: Sequence[str] = (),
    declare_destinations: bool = False,
    backoff: Backoff | None = None,
    connection_name: str | None = None,
    window: int = 4000,
    prefetch: int = 200,
) -> Bridge:
    """
    The link from its C{[link]} table: the one way both taps and the test
    worlds on a real broker build a L{Bridge}.

    @param catalogue: the message types this process knows (the taps start
        from L{relay.sync_messages.sync_catalogue}); the components built on
        the link add theirs.
    @param window: unconfirmed messages the outbox may have in flight.
    @param prefetch: unacknowledged deliveries the broker may send ahead.
    """
    return Bridge(
        reactor, db, metrics, health, catalogue,
        url=config.url, heartbeat=config.heartbeat, unhealthy_after=config.unhealthy_after,
        source=source, consume=consume, declare=declare, declare_destinations=declare_destinations,
        backoff=backoff, connection_name=connection_name, window=window, prefetch=prefetch,
        tls_trust_root=config.trust_root(),
    )


@implementer(ILinkEnd)
class Bridge(MultiService):
    """
    One process's end of the link (build it with L{build_link}).

    @param consume: the queue this process reads (its inbox).
    @param declare: the destinations to declare on every connect, besides
        the one consumed (an exchange and a durable quorum queue of that name,
        bound; declaring is idempotent).
    @param declare_destinations: also declare any other destination before
        publishing to it (see L{Outbox}).
    @param unhealthy_after: seconds the link may be down before the C{link}
        section of C{/healthz} says it is not ok (0: never).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        db: Database,
        metrics: Metrics,
        health: Health,
        catalogue: Catalogue,
        *,
        url: str,
        heartbeat: int,
        source: str,
        consume: str,
        declare: Sequence[str],
        window: int = 4000,
        prefetch: int = 200,
        backoff: Backoff | None = None,
        tls_trust_root: Any = None,
        declare_destinations: bool = False,
        connection_name: str | None = None,
        unhealthy_after: float = 0,
    ) -> None:
        super().__init__()
        self._reactor = reactor
        self._unhealthy_after = unhealthy_after
        # Down from the start until the link first comes up.
        self._down_since: float | None = reactor.seconds()
        self._up_since: float | None = None
        self._consume = consume
        self._declare = list(dict.fromkeys([*declare, consume]))
        self._prefetch = prefetch
        self.catalogue = catalogue
        self._up_hooks: list[Callable[[], object]] = []
        self._backoff = backoff if backoff is not None else Backoff(reactor)
        self._proven = False
        self.outbox = Outbox(
            db, reactor, metrics, source=source, window=window,
            declare_destinations=declare_destinations, on_confirmed=self._progress,
            # Several cloud processes share a PostgreSQL outbox.
            rescan_after=SHARED_RESCAN if db.dialect == "postgresql" else None,
            takeover_after=SHARED_TAKEOVER if db.dialect == "postgresql" else None,
        )
        self.inbox = Inbox(db, reactor, catalogue, metrics, queue=consume, on_applied=self.outbox.wake)
        self.link = LinkService(
            url,
            reactor=reactor,
            heartbeat=heartbeat,
            backoff=self._backoff,
            on_connected=self._connected,
            on_up=self._up,
            on_disconnected=self._disconnected,
            on_blocked=self.outbox.set_blocked,
            connection_name=connection_name or source,
            tls_trust_root=tls_trust_root,
        )
        self.link.setServiceParent(self)
        TimerService(1.0, lambda: Deferred.fromCoroutine(self._housekeeping())).setServiceParent(self)
        health.add_section("link", self.report)
        metrics.gauge("link_up", "1 while the broker connection is up.", lambda: int(self.link.health.connected))
        metrics.gauge("link_reconnects", "Reconnections since start.", lambda: self.link.health.reconnects)

    def when_up(self, hook: Callable[[], object]) -> None:
        """
        Call C{hook} every time the link comes (back) up, once the queues
        are declared, the consumer runs and the link counts as up
        (C{link.health.connected}): components that catch up after an outage
        (the replica's sync) start there.
        """
        self._up_hooks.append(hook)

    def connected(self) -> bool:
        """
        Whether the broker connection is up now (a channel is open).
        """
        return self.link.channel is not None

    def report(self) -> dict[str, Any]:
        """
        The C{link} section of C{/healthz}.  The link being down is the
        situation relay is built for, not a reason to take the process out
        of a load balancer: only a link down for longer than
        C{unhealthy_after} seconds makes it not ok.
        """
        health = self.link.health
        down_for = 0.0 if self._down_since is None else self._reactor.seconds() - self._down_since
        report: dict[str, Any] = {
            "ok": True,
            "up": health.connected,
            "down_for": round(down_for, 3),
            "blocked": health.blocked,
            "reconnects": health.reconnects,
            "last_error": health.last_error,
            "outbox": {
                "state": self.outbox.state,
                "depth": self.outbox.depth,
                "in_flight": self.outbox.in_flight,
                "oldest_age": round(self.outbox.oldest_age(), 3),
            },
            "dead_letters": self.inbox.dead_letters,
        }
        if self._unhealthy_after and down_for > self._unhealthy_after:
            report["ok"] = False
            report["reason"] = (
                f"down for {down_for:.0f} s, longer than link.unhealthy_after ({self._unhealthy_after:g} s)"
                + (f"; last error: {health.last_error}" if health.last_error else "")
            )
        return report

    async def _connected(self, channel: Channel) -> None:
        channel.on_consumer_cancelled = self._consumer_cancelled
        self._proven = False
        declared = Deferred.fromCoroutine(channel.declare_destinations(self._declare))
        # Sent right behind the declarations, before their replies: the
        # broker reads a channel's methods in order, so the queue exists when
        # it reads the consume.  One round trip less per connect.
        consuming = Deferred.fromCoroutine(channel.consume(self._consume, self._deliver, prefetch=self._prefetch))
        try:
            await declared
        except BaseException:
            consuming.addErrback(lambda _: None)
            raise
        self.outbox.attach(channel)
        await consuming

    def link_state(self) -> tuple[str, float | None]:
        """
        The link as the status bar shows it: C{up} (since when), C{connecting}
        (a connection is being set up; down since when) or C{down} (since
        when; since the start if it never came up).
        """
        if self.link.health.connected:
            return "up", self._up_since
        return ("connecting" if self.link.connecting else "down"), self._down_since

    def _up(self) -> None:
        self._down_since = None
        self._up_since = self._reactor.seconds()
        for hook in self._up_hooks:
            try:
                hook()
            except Exception:
                self.log.failure("link-up hook {hook} failed", hook=hook)

    def _deliver(self, delivery: Delivery) -> None:
        self._progress()
        self.inbox.deliver(delivery)

    def _progress(self) -> None:
        """
        Messages are flowing on this connection: the link works, whatever
        failed before (see L{Backoff.proven}).
        """
        if not self._proven:
            self._proven = True
            self._backoff.proven()

    def _disconnected(self, reason: Failure) -> None:
        if self._down_since is None:
            self._down_since = self._reactor.seconds()
        self._up_since = None
        self.outbox.detach()

    def _consumer_cancelled(self, consumer_tag: str) -> None:
        """
        The broker cancelled our consumer (the queue was deleted, or a
        quorum queue lost its leader): declare and subscribe again.
        """
        self.log.warn("broker cancelled consumer {tag} on {queue}; resubscribing", tag=consumer_tag, queue=self._consume)
        channel = self.link.channel
        if channel is None:
            return

        async def resubscribe() -> None:
            await channel.declare_destination(self._consume)
            await channel.consume(self._consume, self._deliver, prefetch=self._prefetch)

        def failed(reason: Failure) -> None:
            if reason.check(LinkDown):
                return  # the connection is going away; the next one subscribes
            self.log.failure("could not resubscribe; dropping the connection", reason)
            self.link.drop("could not resubscribe after a consumer cancel")

        Deferred.fromCoroutine(resubscribe()).addErrback(failed)

    async def _housekeeping(self) -> None:
        try:
            await self.inbox.replay_requested()
        except Exception:
            self.log.failure("link housekeeping failed")

    def stopService(self) -> Deferred[None]:
        stopped = super().stopService()
        self.outbox.stop()
        return stopped  # type: ignore[no-any-return]

    def drained(self) -> Deferred[None]:
        return self.outbox.drained()
