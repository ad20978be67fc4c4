"""
Recovery after a start (also after SIGKILL or a power cut): the spool is
the truth about bytes, the store about what they are.

Spool files no upload owns (a crash between creating the file and the
record, checksum scratch files) are erased; offsets are caught up with what
the spool holds; uploads whose bytes all arrived are finished and staged;
final uploads whose concatenation was cut short are dropped (their parts
are intact, so the client's retry works); staged uploads are handed to the
transfer stage again.
"""

from __future__ import annotations

from twisted.logger import Logger

from relay.edge.uploads.context import UploadContext
from relay.edge.uploads.spool import Spool, SpoolError
from relay.edge.uploads.store import UploadState
from relay.edge.uploads.tus import OURS

log = Logger()


async def recover(service: UploadContext) -> None:
    """
    After a start: erase spool files no upload owns, catch offsets up
    with what the spool holds, finish what completed unrecorded, drop
    unfinished concatenations, and hand staged uploads on again.
    """
    known = {u.id: u for u in await service.store.in_state(UploadState.RECEIVING)}
    staged = await service.store.in_state(UploadState.STAGED)
    others = {u.id for s in (UploadState.TRANSFERRING, UploadState.FAILED, UploadState.IN_CLOUD)
              for u in await service.store.in_state(s)}
    keep = set(known) | {u.id for u in staged} | others
    lengths = {u.id: u.length for u in known.values()}
    stats = await service.threads.run(_recover_spool, service.spool, lengths, keep)
    now = service.now()
    for upload_id, upload in known.items():
        stat = stats.get(upload_id)
        if stat is None or upload.concat == "final":
            log.warn("upload {upload_id} lost its spool file or its concatenation; "
                     "forgetting it", upload_id=upload_id)
            await service.erase([upload_id])
        elif stat[1] and upload.length in (None, stat[0]):
            await service.complete(upload.replace(length=stat[0], offset=stat[0]))
        elif stat[0] != upload.offset:
            log.info("upload {upload_id}: offset {old} -> {new} from the spool",
                     upload_id=upload_id, old=upload.offset, new=stat[0])
            await service.store.record_offset(upload_id, stat[0], now, upload.expires)
    for upload in staged:
        service.hand_off(upload)

def _recover_spool(
    spool: Spool, receiving: dict[str, int | None], keep: set[str]
) -> dict[str, tuple[int, bool]]:
    spool.remove_orphans()
    for file_id in spool.list_ids():
        if file_id not in keep and OURS.match(file_id):
            log.info("erasing spool file {file_id} that no upload owns", file_id=file_id)
            spool.erase(file_id)
    stats = {}
    for upload_id in receiving:
        try:
            stat = spool.stat(upload_id)
            if not stat.finalized and stat.length == receiving[upload_id]:
                # Every byte arrived, the crash came before finalize().
                with spool.open_writer(upload_id) as writer:
                    writer.finalize()
                stat = spool.stat(upload_id)
        except SpoolError:
            continue
        stats[upload_id] = (stat.length, stat.finalized)
    return stats
