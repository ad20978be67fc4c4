"""relay's connection to its broker: reconnecting, heartbeating, confirm-mode.

L{LinkService} keeps one AMQP connection up through C{ClientService}.
After each TCP connect it authenticates (PLAIN), opens channel 1, turns on
publisher confirms and hands a fresh L{relay.link.channel.Channel} to
C{on_connected} (where the outbox and inbox declare their queues and attach)
and to L{LinkService.whenConnected} callers.

Failures of any kind (TCP, TLS, AMQP handshake, C{on_connected}, a channel
error, a heartbeat timeout) end the connection; ClientService then waits as
long as relay's L{relay.link.backoff.Backoff} says and tries again.
"""

from __future__ import annotations

import platform
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from txamqp.client import Closed
from txamqp.message import Message

from relay.link.backoff import Backoff
from relay.link.channel import Channel, ConfirmTracker, Delivery, LinkDown, ReturnedMessage
from relay.link.client import CLIENT_CAPABILITIES, BrokerListener, RelayClient, RelayDelegate
from relay.link.spec import load_spec

__all__ = [
    "BrokerAddress",
    "Channel",
    "ConfirmTracker",
    "Delivery",
    "LinkDown",
    "LinkHealth",
    "LinkService",
    "ReturnedMessage",
]

log = Logger()

OnConnected = Callable[[Channel], None | Awaitable[object]]
OnDisconnected = Callable[[Failure], object]


@dataclass(frozen=True)
class BrokerAddress:
    """Where and as whom to connect, from C{amqp[s]://user:pass@host:port/vhost}.

    Parts are percent-decoded. No path, or C{/} alone, means vhost C{/}
    (write C{%2F} to be explicit). Ports default to 5672 / 5671 (amqps).
    """

    tls: bool
    host: str
    port: int
    username: str
    password: str
    vhost: str

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps"):
            raise ValueError(f"broker URL must start with amqp:// or amqps://, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"broker URL has no host: {url!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"broker URL options are not supported: {url!r}")
        tls = parts.scheme == "amqps"
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        return cls(
            tls=tls,
            host=parts.hostname,
            port=parts.port or (5671 if tls else 5672),
            username=unquote(parts.username) if parts.username is not None else "guest",
            password=unquote(parts.password) if parts.password is not None else "guest",
            vhost=unquote(path) or "/",
        )

    def endpoint(
        self, reactor: Any, *, timeout: float = 30.0, trust_root: Any = None
    ) -> IStreamClientEndpoint:
        """A client endpoint; with TLS, the broker's certificate must name C{host}."""
        tcp = HostnameEndpoint(reactor, self.host, self.port, timeout=timeout)
        if not self.tls:
            return tcp
        return wrapClientTLS(optionsForClientTLS(self.host, trustRoot=trust_root), tcp)

    def __repr__(self) -> str:  # never log the password
        scheme = "amqps" if self.tls else "amqp"
        return f"<BrokerAddress {scheme}://{self.username}@{self.host}:{self.port} vhost={self.vhost!r}>"


@dataclass(frozen=True)
class LinkHealth:
    """A snapshot for /healthz."""

    connected: bool
    reconnects: int
    last_error: str | None
    blocked: bool


def describe(reason: Failure | BaseException) -> str:
    """One line for a failure, including the broker's reply code and text."""
    value = reason.value if isinstance(reason, Failure) else reason
    if isinstance(value, Closed) and value.args:
        value = value.args[0]
    if isinstance(value, Message) and hasattr(value, "reply_code"):
        return (
            f"{value.method.klass.name}.{value.method.name} {value.reply_code} {value.reply_text}"
        )
    if isinstance(value, Failure):
        return describe(value)
    return f"{type(value).__name__}: {value}"


class _Session(BrokerListener):
    """One TCP connection's state; events from it reach the service through here."""

    def __init__(self, service: LinkService, client: RelayClient | None = None) -> None:
        self.service = service
        self.client = client
        self.channel: Channel | None = None
        self.ready = False
        self.lost = False
        self.timed_out = False
        self.timer: IDelayedCall | None = None

    def abort(self, why: str) -> None:
        """Drop the connection now; C{why} becomes the reason it was lost."""
        client = self.client
        # client.closed: txAMQP is already tearing the connection down.
        if not self.lost and client is not None and not client.closed and client.transport:
            if client.close_reason is None:
                client.close_reason = Failure(LinkDown(why))
            client.transport.abortConnection()

    def delivered(self, channel_id: int, message: Message) -> None:
        if self.channel is not None:
            self.channel._delivered(message)

    def returned(self, channel_id: int, message: Message) -> None:
        if self.channel is not None:
            self.channel._returned(message)

    def confirmed(self, channel_id: int, delivery_tag: int, multiple: bool, ack: bool) -> None:
        if self.channel is not None:
            self.channel._confirmed(delivery_tag, multiple, ack)

    def consumer_cancelled(self, channel_id: int, consumer_tag: str) -> None:
        log.warn("broker cancelled consumer {tag}", tag=consumer_tag)
        if self.channel is not None:
            self.channel._consumer_cancelled(consumer_tag)

    def blocked(self, reason: str) -> None:
        self.service._set_blocked(True, reason)

    def unblocked(self) -> None:
        self.service._set_blocked(False, "")

    def channel_closed(self, channel_id: int, reason: Failure) -> None:
        self.service._channel_failed(self, reason)

    def connection_lost(self, reason: Failure) -> None:
        self.service._lost(self, reason)


class _LinkFactory(Factory):
    noisy = False  # one "Starting factory" line per reconnect is noise

    def __init__(self, service: LinkService) -> None:
        self.service = service

    def buildProtocol(self, addr: Any) -> RelayClient:
        return self.service._new_connection()


class LinkService(Service):
    """The broker connection as a service: always trying to have one ready channel.

    C{on_connected(channel)} runs on every (re)connection before the
    connection counts as up; if it fails (or its awaitable does), the
    connection is dropped and retried. C{on_up()} runs once it counts
    as up (C{channel} is set, C{health.connected} is true): components that
    catch up after an outage start there. C{on_disconnected(reason)} runs
    when a connection that was up goes away. C{reactor} must provide IReactorTCP and
    IReactorTime. C{heartbeat} (seconds) also bounds how long a silently
    stalled link goes unnoticed: three intervals without a frame end it.
    """

    def __init__(
        self,
        url: str,
        *,
        reactor: Any,
        backoff: Backoff | None = None,
        heartbeat: int = 10,
        on_connected: OnConnected | None = None,
        on_up: Callable[[], object] | None = None,
        on_disconnected: OnDisconnected | None = None,
        on_blocked: Callable[[bool], object] | None = None,
        connection_name: str = "relay",
        handshake_timeout: float = 30.0,
        connect_timeout: float = 30.0,
        tls_trust_root: Any = None,
    ) -> None:
        self.address = BrokerAddress.parse(url)
        self._reactor = reactor
        self._backoff = backoff if backoff is not None else Backoff(reactor)
        self._heartbeat = heartbeat
        self._on_connected = on_connected
        self._on_up = on_up
        self._on_disconnected = on_disconnected
        self._on_blocked = on_blocked
        self._handshake_timeout = handshake_timeout
        self._client_properties = {
            "product": "relay",
            "platform": f"Python {platform.python_version()} (Twisted, txAMQP 0.8.2)",
            "connection_name": connection_name,
            "capabilities": dict(CLIENT_CAPABILITIES),
        }
        self._session: _Session | None = None
        self._waiters: list[Deferred[Channel]] = []
        self._stopping = False
        self._ever_connected = False
        self._reconnects = 0
        self._last_error: str | None = None
        self._blocked = False
        endpoint = self.address.endpoint(
            reactor, timeout=connect_timeout, trust_root=tls_trust_root
        )
        self._client_service = ClientService(
            endpoint, _LinkFactory(self), retryPolicy=self._retry_delay, clock=reactor
        )

    # -- public ----------------------------------------------------------------

    @property
    def health(self) -> LinkHealth:
        return LinkHealth(
            connected=self.channel is not None,
            reconnects=self._reconnects,
            last_error=self._last_error,
            blocked=self._blocked,
        )

    @property
    def connecting(self) -> bool:
        """A connection is open and its handshake not done yet."""
        session = self._session
        return session is not None and not session.ready

    @property
    def channel(self) -> Channel | None:
        """The ready channel, or None while the link is down."""
        session = self._session
        return session.channel if session is not None and session.ready else None

    def whenConnected(self) -> Deferred[Channel]:
        """The ready channel now, or the next one; fails with CancelledError on stop."""
        channel = self.channel
        if channel is not None:
            return succeed(channel)
        if self._stopping:
            return fail(CancelledError("link stopped"))
        waiter: Deferred[Channel] = Deferred(canceller=self._forget_waiter)
        self._waiters.append(waiter)
        return waiter

    def _forget_waiter(self, waiter: Deferred[Channel]) -> None:
        # A caller gave up (a timeout, say): never fire its Deferred again.
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def drop(self, why: str) -> None:
        """Drop the current connection (if any); the service reconnects."""
        session = self._session
        if session is not None:
            session.abort(why)

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        log.info("AMQP link starting: {address}", address=self.address)
        self._client_service.startService()

    def stopService(self) -> Deferred[None]:
        if not self.running:
            return succeed(None)
        super().stopService()
        self._stopping = True
        session = self._session
        if session is not None and session.client is not None and not session.client.closed:
            # Say goodbye so the broker logs a clean close; don't wait for it.
            session.client.channel(0).addCallback(
                lambda ch0: ch0.connection_close(reply_code=200, reply_text="relay stopping")
            ).addErrback(lambda _: None)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(CancelledError("link stopped"))
        stopped = self._client_service.stopService()
        # ClientService fires this from inside its state machine, which must
        # not be re-entered (say, by a caller restarting at once): let the
        # caller continue on the next reactor turn instead.
        return stopped.addCallback(lambda _: deferLater(self._reactor, 0, lambda: None))

    # -- connection life cycle -----------------------------------------------------

    def _retry_delay(self, failed_attempts: int) -> float:
        # ClientService's own count restarts at every TCP connect: ignore it.
        delay = self._backoff.next_delay()
        log.info(
            "AMQP link: attempt {attempt} in {delay:.2f}s (last error: {error})",
            attempt=self._backoff.attempts,
            delay=delay,
            error=self._last_error,
        )
        return delay

    def _new_connection(self) -> RelayClient:
        session = _Session(self)
        client = RelayClient(
            RelayDelegate(session, self._client_properties),
            self.address.vhost,
            load_spec(),
            heartbeat=self._heartbeat,
            clock=self._reactor,
        )
        session.client = client
        self._session = session
        session.timer = self._reactor.callLater(
            self._handshake_timeout, self._handshake_timed_out, session
        )
        Deferred.fromCoroutine(self._handshake(session))
        return client

    async def _handshake(self, session: _Session) -> None:
        client = session.client
        assert client is not None
        try:
            await client.authenticate(
                self.address.username, self.address.password, mechanism="PLAIN"
            )
            amqp_channel = await client.channel(1)
            # Back to back, one round trip: the broker reads a channel's
            # methods in order, and txAMQP hands replies out in order.
            opened = amqp_channel.channel_open()
            confirming = amqp_channel.confirm_select()
            try:
                await opened
            except BaseException:
                confirming.addErrback(lambda _: None)  # fails too; the first failure says why
                raise
            await confirming
            session.channel = Channel(amqp_channel, self._reactor)
            if self._on_connected is not None:
                await maybeDeferred(self._on_connected, session.channel)
            if session.lost:
                raise LinkDown("connection lost during on_connected")
        except Exception:
            reason = Failure()
            if session.timed_out:
                error = f"AMQP handshake timed out after {self._handshake_timeout}s"
            else:
                error = describe(reason)
            self._last_error = error
            log.warn("AMQP link handshake failed: {error}", error=error)
            self._end_session(session)
            session.abort(error)
            return
        self._end_session(session)
        session.ready = True
        if self._ever_connected:
            self._reconnects += 1
        self._ever_connected = True
        self._backoff.connected()
        log.info(
            "AMQP link up: {host}:{port} vhost {vhost} (reconnects: {reconnects})",
            host=self.address.host,
            port=self.address.port,
            vhost=self.address.vhost,
            reconnects=self._reconnects,
        )
        if self._on_up is not None:
            try:
                self._on_up()
            except Exception:
                log.failure("on_up failed")
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(session.channel)

    def _end_session(self, session: _Session) -> None:
        if session.timer is not None and session.timer.active():
            session.timer.cancel()
        session.timer = None

    def _handshake_timed_out(self, session: _Session) -> None:
        session.timer = None
        session.timed_out = True
        session.abort(f"AMQP handshake timed out after {self._handshake_timeout}s")

    def _channel_failed(self, session: _Session, reason: Failure) -> None:
        if session.lost:
            return
        self._last_error = describe(reason)
        log.warn("AMQP channel closed by broker: {error}; reconnecting", error=self._last_error)
        session.abort(self._last_error)

    def _set_blocked(self, blocked: bool, reason: str) -> None:
        self._blocked = blocked
        if self._on_blocked is not None:
            self._on_blocked(blocked)
        if blocked:
            log.warn("broker blocked publishing: {reason}", reason=reason)
        else:
            log.info("broker unblocked publishing")

    def _lost(self, session: _Session, reason: Failure) -> None:
        session.lost = True
        self._end_session(session)
        if session.channel is not None:
            session.channel._lost(reason)
        if self._session is session:
            self._session = None
        self._backoff.disconnected()
        self._blocked = False
        if not session.ready:
            return  # a failed handshake: already recorded
        session.ready = False
        if not self._stopping:
            self._last_error = describe(reason)
            log.warn("AMQP link down: {error}", error=self._last_error)
        if self._on_disconnected is not None:
            try:
                self._on_disconnected(reason)
            except Exception:
                log.failure("on_disconnected failed")
