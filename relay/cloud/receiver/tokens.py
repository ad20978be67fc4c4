"""
The bearer tokens an edge's transfer client shows the receiver: 32 random
bytes (URL-safe base64), issued by the cloud over AMQP
(C{transfer.authorized}) for one transfer, living C{receiver.token_ttl}
seconds.  Only their sha256 is stored; a new token for a transfer replaces
the old one (a replayed old token is refused), and the tokens of a
finished or aborted transfer are forgotten.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from relay.cloud.receiver import store


@dataclass(frozen=True)
class Issued:
    token: str
    expires_in: int
    url: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


class TokenIssuer:
    """
    Issues tokens (in the caller's transaction, L{issue}) for the receiver
    whose public address is C{public_url} (its C{/transfers/} collection).
    """

    def __init__(self, public_url: str, ttl: int) -> None:
        self.public_url = public_url.rstrip("/") + "/"
        self.ttl = ttl

    def issue(self, conn: Any, transfer_id: str, now: float) -> Issued:
        token = secrets.token_urlsafe(32)
        store.replace_token(conn, transfer_id, token_hash(token), now + self.ttl)
        return Issued(token, self.ttl, f"{self.public_url}{transfer_id}/")
