"""
The receiver as a component of the cloud process: built from the
C{[receiver]} table (L{build_receiver}), a listener on its own endpoint
whose requests stream their bodies.
"""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.service import IService
from twisted.web.server import Site

from relay.cloud.objects import IObjectStore
from relay.cloud.receiver.resource import ReceiverResource
from relay.cloud.receiver.service import ReceiverSettings, TransferReceiver
from relay.cloud.receiver.tokens import TokenIssuer
from relay.cloud.transfers import CloudTransfers
from relay.db import Database
from relay.metrics import Metrics
from relay.transfer_messages import MAX_PART_SIZE, MAX_PARTS
from relay.tus.streaming import StreamingSettings, streaming_request_factory


def token_issuer(section: Any) -> TokenIssuer | None:
    """The tokens C{transfer.authorize} hands out, if this cloud runs a receiver."""
    if section.listen is None:
        return None
    return TokenIssuer(section.public_url, section.token_ttl)


def build_receiver(
    section: Any, reactor: Any, db: Database, objects: IObjectStore, transfers: CloudTransfers,
    metrics: Metrics | None = None,
) -> IService | None:
    """
    The receiver's listener from the C{[receiver]} table (C{None} without
    C{receiver.listen}); completions go to C{transfers}.
    """
    if section.listen is None:
        return None
    receiver = TransferReceiver(reactor, db, objects, transfers.finish_later,
                                ReceiverSettings(max_streams=section.max_streams))
    if metrics is not None:
        metrics.gauge("receiver_parts_stored", "Parts the receiver wrote to S3.", lambda: receiver.parts_stored)
        metrics.gauge("receiver_bytes_received", "Bytes of PATCH bodies taken.", lambda: receiver.bytes_received)
    site = Site(ReceiverResource(receiver, MAX_PART_SIZE * MAX_PARTS))
    site.requestFactory = streaming_request_factory(StreamingSettings(
        reactor, prefix=b"/transfers", body_idle_timeout=section.body_timeout))  # type: ignore[assignment]
    site.displayTracebacks = False
    return strports.service(section.listen, site, reactor=reactor)
