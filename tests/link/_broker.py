"""Helpers for tests that talk to the real RabbitMQ on loopback."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest
from txamqp.client import TwistedDelegate
from txamqp.protocol import AMQChannel, AMQClient
from txamqp.spec import Spec

from relay.link.channel import Channel
from relay.link.client import CLIENT_CAPABILITIES, BrokerListener, RelayClient, RelayDelegate
from relay.link.connection import LinkService
from relay.link.spec import load_spec

HOST = "127.0.0.1"
PORT = int(os.environ.get("RELAY_TEST_AMQP_PORT", "5672"))
#: The link tests' own vhost on the machine's broker, never the default
#: one; one per test process (two processes run tests at once), made and
#: removed with everything in it by C{tests/link/conftest.py}.
VHOST = f"relay-test-link-{os.getpid()}"
URL = f"amqp://guest:guest@{HOST}:{PORT}/{VHOST}"


def unique(what: str) -> str:
    return f"relay-test-{what}-{uuid.uuid4().hex[:10]}"


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def wait_for(
    predicate: Callable[[], object], timeout: float = 10.0, step: float = 0.01
) -> None:
    """Poll until predicate() is true; fail the test after ``timeout`` seconds."""
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        await sleep(step)
        waited += step


async def within(d: Deferred[Any], seconds: float) -> Any:
    """Await ``d`` for at most ``seconds`` (cancelling it on timeout)."""
    return await d.addTimeout(seconds, reactor)


async def rabbitmqctl(*args: str) -> str:
    out, err, code = await getProcessOutputAndValue("rabbitmqctl", ["-s", *args], env=os.environ)
    if code != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {err.decode()}")
    return out.decode()


async def delete_queue(name: str) -> None:
    """Delete a queue of the link tests' vhost."""
    await rabbitmqctl("delete_queue", "-p", VHOST, name)


async def close_connections_named(name: str, reason: str = "test kills the link") -> int:
    """Close (from the broker side) the connections whose client said connection_name=name."""
    listing = await rabbitmqctl("list_connections", "pid", "client_properties")
    marker = f'{{"connection_name","{name}"}}'
    pids = [line.split("\t")[0] for line in listing.splitlines() if marker in line]
    for pid in pids:
        await rabbitmqctl("close_connection", pid, reason)
    return len(pids)


async def connect_raw(
    listener: BrokerListener | None = None,
    *,
    spec: Spec | None = None,
    client_class: type[AMQClient] = RelayClient,
    delegate: TwistedDelegate | None = None,
    port: int = PORT,
    heartbeat: int = 0,
) -> AMQClient:
    """An authenticated txAMQP client, by default with all of relay's fixes."""
    spec = spec if spec is not None else load_spec()
    if delegate is None:
        properties = {"capabilities": CLIENT_CAPABILITIES, "connection_name": unique("raw")}
        delegate = RelayDelegate(listener or BrokerListener(), properties)
    factory = Factory.forProtocol(
        lambda: client_class(delegate, VHOST, spec, heartbeat=heartbeat, clock=reactor)
    )
    client: Any = await TCP4ClientEndpoint(reactor, HOST, port).connect(factory)
    await within(client.authenticate("guest", "guest", mechanism="PLAIN"), 5)
    return client  # type: ignore[no-any-return]


async def open_channel(client: AMQClient, number: int = 1, confirm: bool = False) -> AMQChannel:
    channel = await client.channel(number)
    await within(channel.channel_open(), 5)
    if confirm:
        await within(channel.confirm_select(), 5)
    return channel


async def close_raw(client: AMQClient) -> None:
    """Close a raw client and wait until its socket is gone (trial checks)."""
    if not client.closed:
        try:
            await client.close(within=2)
        except Exception:
            pass
    if client.transport is not None and client.transport.connected:
        client.transport.abortConnection()
    await client.disconnected.wait()


class BrokerTestCase(unittest.TestCase):
    """A trial test case with broker clean-up: queues named in ``self.queues`` are
    deleted afterwards through a fresh connection."""

    timeout = 20

    def setUp(self) -> None:
        self.queues: list[str] = []
        self.addCleanup(self._delete_queues)

    def queue_name(self, what: str) -> str:
        name = unique(what)
        self.queues.append(name)
        return name

    async def raw(self, listener: BrokerListener | None = None, **kwargs: Any) -> AMQClient:
        client = await connect_raw(listener, **kwargs)
        self.addCleanup(lambda: Deferred.fromCoroutine(close_raw(client)))
        return client

    def service(self, url: str = URL, **kwargs: Any) -> LinkService:
        """A started LinkService, stopped after the test."""
        kwargs.setdefault("heartbeat", 5)
        kwargs.setdefault("connection_name", unique("link"))
        service = LinkService(url, reactor=reactor, **kwargs)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    async def channel(self, **kwargs: Any) -> Channel:
        """The channel of a fresh LinkService."""
        return await within(self.service(**kwargs).whenConnected(), 10)

    async def _delete_queues_async(self) -> None:
        if not self.queues:
            return
        client = await connect_raw()
        try:
            channel = await open_channel(client)
            for name in self.queues:
                await within(channel.queue_delete(queue=name), 5)
        finally:
            await close_raw(client)

    def _delete_queues(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._delete_queues_async())
