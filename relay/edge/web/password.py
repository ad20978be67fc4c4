"""
C{POST /api/password}: a person changes their own password at the edge.

The edge checks the current password against the replica's hash, makes
the new hash itself (scrypt, off the reactor thread) and sends only that
hash to the cloud, in a C{user.password} command that also names the hash
it replaces; plaintext never leaves this process.  The cloud applies it
unless the password was changed there meanwhile, and the new hash comes
back like any change: until then the old password still logs in at this
edge, and afterwards the caller's sessions end (every session remembers
the hash it was opened with), so they log in again with the new one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from relay.credentials import (
    DEFAULT_COST,
    ScryptCost,
    WeakPassword,
    check_password_strength,
    hash_password,
    password_hash_digest,
    verify_password,
)
from relay.db import Database
from relay.edge.auth import Principal
from relay.edge.events import EventHub
from relay.edge.identity import CpuRunner, Identity, json_body
from relay.edge.login_throttle import LoginThrottle, Throttled
from relay.edge.replica.pending import CommandIssuer
from relay.edge.web.guard import answer, authenticated
from relay.edge.web.routes import api_route
from relay.permissions import Refused
from relay.sync_messages import USER_PASSWORD


class PasswordChange:
    """
    The password route.  Wrong current passwords count per user, as failed
    logins do per name: guessing through a stolen session is throttled too.
    """

    def __init__(
        self, identity: Identity, db: Database, issuer: CommandIssuer, hub: EventHub,
        wake: Callable[[], object], clock: IReactorTime, cpu: CpuRunner, *, cost: ScryptCost = DEFAULT_COST,
    ) -> None:
        self._identity = identity
        self._db = db
        self._issuer = issuer
        self._hub = hub
        self._wake = wake
        self._cpu = cpu
        self._cost = cost
        self._throttle = LoginThrottle(clock)

    def routes(self, app: Klein) -> None:
        @api_route(app, "/password", ["POST"])
        @authenticated(self._identity, before_password_change=True)
        async def change_password(request: IRequest, principal: Principal) -> bytes:
            body = json_body(request)
            if isinstance(body, bytes):
                return body
            current, new = body.get("current_password"), body.get("new_password")
            if not isinstance(current, str) or not isinstance(new, str) or not current:
                return answer(request, 400, {"error": "send 'current_password' and 'new_password'"})
            try:
                check_password_strength(new)
            except WeakPassword as weak:
                return answer(request, 400, {"error": str(weak)})
            user_id = principal.user_id
            try:
                attempt = self._throttle.reserve(user_id)
            except Throttled as throttled:
                request.setHeader(b"retry-after", str(throttled.retry_after).encode())
                return answer(request, 429, {"error": "too many wrong passwords; try again later"})
            try:
                stored = await self._db.read(_password_hash, user_id)
                if stored is None or not await self._cpu(verify_password, current, stored):
                    return answer(request, 403, {"error": "the current password is wrong"})
                attempt.succeeded()
            finally:
                attempt.failed()  # unless it succeeded
            new_hash = await self._cpu(hash_password, new, self._cost)
            fields = {"password_hash": new_hash, "replaces": password_hash_digest(stored)}
            try:
                command_id = await self._db.run(self._issuer.issue, principal, USER_PASSWORD, fields)
            except Refused as refused:
                return answer(request, 403, {"error": refused.reason, "code": refused.code})
            self._wake()
            self._hub.publish(user_id, "command.pending", {"command_id": command_id, "type": USER_PASSWORD})
            return answer(request, 202, {
                "command_id": command_id, "state": "pending",
                "note": "the new password takes effect once the cloud has applied it; "
                        "then log in again with it",
            })


def _password_hash(conn: Any, user_id: str) -> str | None:
    row = conn.execute("SELECT password_hash FROM replica_users WHERE id = ?", (user_id,)).fetchone()
    return None if row is None else str(row[0])
