"""
The seam between the tus receiver and the transfer stage.

When every byte of an upload is durably in the spool, the receiver records
it as C{staged} and hands it to an L{IUploadSink}.  The transfer stage
implements the interface: it reads the spool file, moves it to the cloud,
and reports its progress through L{relay.edge.uploads.store.UploadStore}
(C{set_state}, C{record_transferred}); its fake is
L{relay.testing.transfer.FakeUploadSink}.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.defer import Deferred
from zope.interface import Interface


@dataclass(frozen=True)
class StagedUpload:
    """
    A complete upload, waiting in the spool.

    @ivar spool_id: the spool file holding its bytes (today the upload id).
    @ivar filename: sanitised; metadata only, never a path.
    """

    upload_id: str
    spool_id: str
    owner: str
    project: str
    filename: str
    filetype: str
    length: int


class IUploadSink(Interface):
    """
    Takes complete uploads from the receiver: the transfer stage.
    """

    def upload_staged(upload: StagedUpload) -> Deferred[None]:
        """
        The upload's bytes are complete and durable in the spool (the final
        byte fsync'd) and its record says C{staged}.  Called again for every
        upload still C{staged} after a restart, so it must be idempotent.
        The returned Deferred fires once the sink has taken note (not when
        the transfer is over); a failure is logged and retried at the next
        start.  From now on the sink owns the spool file: it erases it
        (C{Spool.erase}) once the cloud has confirmed the object.
        """

    def retry_transfer(upload_id: str) -> Deferred[bool]:
        """
        The upload's transfer failed for good and its owner wants it started
        over from the spool copy (still there: it is erased only once the
        cloud has the file).  Fires with whether it was started over
        (C{False}: the transfer is not failed, or not done failing).
        """
