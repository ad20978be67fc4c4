"""
What an upload's owner is told as it happens, through the edge's
L{EventHub} (the browser's C{/api/events}):

  - C{upload.state}: C{upload_id}, C{state} (C{receiving}, C{staged},
    C{transferring}, C{in_cloud}, C{failed}) and, when failed, C{reason};
  - C{upload.progress}: C{upload_id}, C{offset} (bytes received),
    C{length} (C{None} while deferred);
  - C{transfer.progress}: C{upload_id}, C{confirmed} (bytes S3 has
    confirmed), C{total}, C{parts_done}, C{parts_total}.
  - C{upload.removed}: C{upload_id}, C{reason} (C{terminated}: its
    client deleted it; C{expired}: it stayed unfinished too long); the
    edge has forgotten the upload.

Progress is coalesced per upload and kind: the first report goes out at
once, later ones at most every C{interval} seconds (the latest wins).  A
state change first sends the upload's progress still held back, so the
owner never sees progress arrive after the state it led to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from relay.edge.events import EventHub

UPLOAD_STATE = "upload.state"
UPLOAD_PROGRESS = "upload.progress"
UPLOAD_REMOVED = "upload.removed"
TRANSFER_PROGRESS = "transfer.progress"

#: At most four progress events per second per upload and kind.
INTERVAL = 0.25


@dataclass
class _Window:
    """A progress report went out for (kind, upload); until C{closes}, later ones wait."""

    owner: str
    closes: IDelayedCall
    held: dict[str, Any] | None = None


class UploadAnnouncer:
    """
    Publishes upload events to their owners (see the module docstring);
    with no hub, it says nothing.
    """

    def __init__(self, clock: IReactorTime, hub: EventHub | None, interval: float = INTERVAL) -> None:
        self._clock = clock
        self._hub = hub
        self._interval = interval
        self._windows: dict[tuple[str, str], _Window] = {}

    def state(self, owner: str, upload_id: str, state: str, reason: str | None = None) -> None:
        """The upload is in C{state} now (C{reason}: why it failed)."""
        if self._hub is None:
            return
        for kind in (UPLOAD_PROGRESS, TRANSFER_PROGRESS):
            self._flush((kind, upload_id))
        data: dict[str, Any] = {"upload_id": upload_id, "state": state}
        if reason is not None:
            data["reason"] = reason
        self._hub.publish(owner, UPLOAD_STATE, data)

    def removed(self, owner: str, upload_id: str, reason: str) -> None:
        """The upload is gone (C{reason}: C{terminated} or C{expired}); what was held back goes with it."""
        if self._hub is None:
            return
        for kind in (UPLOAD_PROGRESS, TRANSFER_PROGRESS):
            window = self._windows.pop((kind, upload_id), None)
            if window is not None and window.closes.active():
                window.closes.cancel()
        self._hub.publish(owner, UPLOAD_REMOVED, {"upload_id": upload_id, "reason": reason})

    def received(self, owner: str, upload_id: str, offset: int, length: int | None) -> None:
        """The edge holds C{offset} bytes of the upload."""
        self._progress(owner, UPLOAD_PROGRESS, upload_id, {"offset": offset, "length": length})

    def transferred(self, owner: str, upload_id: str, confirmed: int, total: int,
                    parts_done: int, parts_total: int) -> None:
        """S3 has confirmed C{confirmed} of C{total} bytes (C{parts_done} parts)."""
        self._progress(owner, TRANSFER_PROGRESS, upload_id, {
            "confirmed": confirmed, "total": total, "parts_done": parts_done, "parts_total": parts_total,
        })

    def flush(self) -> None:
        """Send every report held back now (the edge is stopping)."""
        for key in list(self._windows):
            self._flush(key)

    def _progress(self, owner: str, kind: str, upload_id: str, data: dict[str, Any]) -> None:
        if self._hub is None:
            return
        data = {"upload_id": upload_id, **data}
        window = self._windows.get((kind, upload_id))
        if window is None:
            self._send(owner, kind, upload_id, data)
        else:
            window.held = data

    def _send(self, owner: str, kind: str, upload_id: str, data: dict[str, Any]) -> None:
        assert self._hub is not None
        self._hub.publish(owner, kind, data)
        key = (kind, upload_id)
        self._windows[key] = _Window(owner, self._clock.callLater(self._interval, self._close, key))

    def _close(self, key: tuple[str, str]) -> None:
        window = self._windows.pop(key)
        if window.held is not None:
            self._send(window.owner, key[0], key[1], window.held)

    def _flush(self, key: tuple[str, str]) -> None:
        window = self._windows.pop(key, None)
        if window is None:
            return
        if window.closes.active():
            window.closes.cancel()
        if window.held is not None:
            assert self._hub is not None
            self._hub.publish(window.owner, key[0], window.held)
