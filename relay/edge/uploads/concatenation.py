"""
The concatenation extension's final step, apart from the rest of the
service: a final upload is made from its parts at creation time.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from relay.edge.auth import Principal
from relay.edge.uploads.context import UploadContext
from relay.edge.uploads.locks import Lease
from relay.edge.uploads.receiver import SPACE_MESSAGE
from relay.edge.uploads.spool import SpoolFull
from relay.edge.uploads.store import Upload
from relay.edge.uploads.tus import OURS, sanitise_filename
from relay.tus.protocol import Creation, TusError, text, upload_id_from_url


async def concatenate(
    service: UploadContext, principal: Principal, creation: Creation, abort: Callable[[], None]
) -> Upload:
    """
    C{Upload-Concat: final;...}: join complete partial uploads of the same
    user, in order, into a new complete upload (decrypted and re-encrypted
    segment by segment on the spool threads), stage it, and erase the parts.
    """
    ids = []
    for url in creation.parts:
        part_id = upload_id_from_url(url, service.prefix)
        if part_id is None:
            raise TusError(400, f"{url[:100]!r} is not an upload of this server")
        ids.append(part_id)
    parts = []
    for part_id in ids:
        part = await service.store.get(part_id) if OURS.match(part_id) else None
        if part is None or part.owner != principal.user_id:
            raise TusError(400, f"partial upload {part_id} does not exist")
        if part.concat != "partial":
            raise TusError(400, f"upload {part_id} is not a partial upload")
        if not part.complete:
            raise TusError(400, f"partial upload {part_id} is not complete yet")
        parts.append(part)
    length = sum(p.length or 0 for p in parts)
    if length > service.limits.max_size:
        raise TusError(413, f"the parts add up to {length} bytes, over the maximum of "
                            f"{service.limits.max_size}")
    if service.spool.free_bytes() - length < service.limits.disk_reserve:
        raise TusError(507, "the edge has not enough disk space to join these parts now")
    project = await service.project_for(principal, creation)
    leases: list[Lease] = []
    try:
        for part_id in dict.fromkeys(ids):
            leases.append(await service.locks.acquire(part_id, abort))
        now = service.now()
        upload = Upload(
            id=secrets.token_hex(16), owner=principal.user_id, project=project,
            filename=sanitise_filename(creation.metadata.get("filename")),
            filetype=text(creation.metadata.get("filetype"))[:255], length=length,
            raw_metadata=creation.raw_metadata, concat="final", parts=tuple(ids),
            created=now, updated=now,
        )
        await service.store.add(upload)
        try:
            await service.threads.run(service.spool.concatenate, upload.id, ids)
        except SpoolFull:
            await service.store.remove([upload.id])
            raise TusError(507, SPACE_MESSAGE) from None
        upload = await service.complete(upload.replace(offset=length))
        await service.erase(dict.fromkeys(ids))
        return upload
    finally:
        for lease in leases:
            lease.release()
