"""
A person's own API keys, self-service (C{docs/api.md}, "API keys"):

  - C{GET /api/v1/keys}: the caller's keys (id, name, when made, what is
    pending), never a secret or a hash;
  - C{POST /api/v1/keys} C{{"name"}}: a new key.  The edge makes it
    (L{relay.credentials.new_api_key}), keeps only the hash of its secret
    in a C{user.key.create} command to the cloud, and shows the secret in
    this one answer: it never crosses the link and is never written down.
    The key works once the cloud has applied the command and the replica
    has the key;
  - C{DELETE /api/v1/keys/<id>}: revoke one (C{user.key.revoke}); it stops
    working once the cloud applied it and the replica has the revocation.

Another user's key is answered 404, as an id that is none.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from klein import Klein
from twisted.web.iweb import IRequest

from relay.credentials import new_api_key
from relay.db import Database
from relay.edge.auth import Principal
from relay.edge.events import EventHub
from relay.edge.identity import Identity, json_body
from relay.edge.replica.pending import CommandIssuer, keys_for
from relay.edge.web.errors import REFUSAL_STATUS
from relay.edge.web.guard import answer, authenticated
from relay.edge.web.routes import api_route
from relay.permissions import Refused
from relay.sync_messages import KEY_CREATE, KEY_REVOKE

_KEY_ID = re.compile(r"[0-9a-f]{16}")
MAX_NAME = 200


class ApiKeys:
    """
    The key routes.

    @param wake: the outbox's C{wake}, called after a command was committed.
    """

    def __init__(
        self, identity: Identity, db: Database, issuer: CommandIssuer, hub: EventHub, wake: Callable[[], object]
    ) -> None:
        self._identity = identity
        self._db = db
        self._issuer = issuer
        self._hub = hub
        self._wake = wake

    def routes(self, app: Klein) -> None:
        authed = authenticated(self._identity)

        @api_route(app, "/keys", ["GET"], legacy=False)
        @authed
        async def list_keys(request: IRequest, principal: Principal) -> bytes:
            return answer(request, 200, {"keys": await self._db.read(keys_for, principal.user_id)})

        @api_route(app, "/keys", ["POST"], legacy=False)
        @authed
        async def create_key(request: IRequest, principal: Principal) -> bytes:
            body = json_body(request)
            if isinstance(body, bytes):
                return body
            name = body.get("name")
            if not isinstance(name, str) or not name.strip() or len(name.strip()) > MAX_NAME:
                return answer(request, 400, {"error": f"send the key's 'name' (1 to {MAX_NAME} characters)"})
            name = name.strip()
            if any(ord(c) < 32 or ord(c) == 127 for c in name):
                return answer(request, 400, {"error": "a name cannot contain control characters"})
            key = new_api_key()
            fields = {"key_id": key.key_id, "key_hash": key.key_hash, "name": name}
            result = await self._issue(request, principal, KEY_CREATE, fields, key.key_id)
            if isinstance(result, bytes):
                return result
            # The one place the secret is ever shown.
            return answer(request, 202, {**result, "secret": key.token})

        @api_route(app, "/keys/<key_id>", ["DELETE"], legacy=False)
        @authed
        async def revoke_key(request: IRequest, principal: Principal, key_id: str) -> bytes:
            if not _KEY_ID.fullmatch(key_id):
                return answer(request, 404, {"error": "no such API key"})
            result = await self._issue(request, principal, KEY_REVOKE, {"key_id": key_id}, key_id)
            if isinstance(result, bytes):
                return result
            return answer(request, 202, result)

    async def _issue(
        self, request: IRequest, principal: Principal, type: str, fields: dict[str, Any], key_id: str
    ) -> dict[str, Any] | bytes:
        def work(conn: Any) -> tuple[str, dict[str, Any] | None]:
            command_id = self._issuer.issue(conn, principal, type, fields)
            return command_id, next((k for k in keys_for(conn, principal.user_id) if k["id"] == key_id), None)

        try:
            command_id, key = await self._db.run(work)
        except Refused as refused:
            return answer(request, REFUSAL_STATUS.get(refused.code, 403), {"error": refused.reason, "code": refused.code})
        self._wake()
        self._hub.publish(principal.user_id, "command.pending", {"command_id": command_id, "type": type})
        return {"command_id": command_id, "state": "pending", "key": key}
