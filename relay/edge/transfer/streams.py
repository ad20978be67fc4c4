"""
The tus path of the transfer stage (C{transfer.mode = "tus"}): one
upload's file goes to the cloud's receiver as partial uploads, each a run
of whole S3 parts (L{ranges}), several at once (L{StreamSender}), and ends
with the final concatenation.  A PATCH that breaks (reset, stall, 5xx)
costs a reconnect: the stream asks the receiver where the upload stands
(HEAD) and continues from there.  The receiver's offsets say which parts
S3 holds (everything below the offset but the part being filled): those
are confirmed in the journal as they come.

How many ranges are in flight follows what the link delivers
(L{StreamCount}): it starts wide (where the file before settled,
L{StreamMemory}), doubles while the bytes the link takes per window grow,
steps back when they stop growing, and probes up and down now and then,
within C{[min_streams, max_streams]}.  There are no copies of slow ranges: on a
link whose aggregate is the limit they would only take bandwidth from the
others.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from relay.edge.transfer.body import PartBody, StagedCopyDamaged
from relay.edge.transfer.journal import JournalPart
from relay.edge.transfer.planner import Part
from relay.edge.transfer.tus_client import (
    ITusTarget,
    TusResponse,
    creation_headers,
    headers,
    patch_headers,
)
from relay.link.backoff import Backoff
from relay.tus.protocol import final_concat

#: A PATCH whose body is all written may be silent this many times the
#: stall timeout before it counts as stalled.
DRAINING_STALL_FACTOR = 4

#: A PATCH that ran this long before it broke proved the link works: the
#: stream's backoff starts over.
HEALTHY_PATCH = 2.0

#: At most this many partial uploads per file (the final upload's
#: Upload-Concat header lists them all).
MAX_RANGES = 256


@dataclass(frozen=True)
class Range:
    """S3 parts C{first}-C{last}: bytes C{offset} to C{offset + length} of the file."""

    first: int
    last: int
    offset: int
    length: int
    md5s: bytes
    #: The size of its parts (the file's last part may be shorter).
    part_size: int


def ranges(parts: Sequence[JournalPart], most: int = MAX_RANGES) -> list[Range]:
    """Cut the file's parts into at most C{most} runs of equal part count."""
    per = max(1, -(-len(parts) // most))
    out = []
    for i in range(0, len(parts), per):
        run = parts[i:i + per]
        out.append(Range(run[0].number, run[-1].number, run[0].offset, sum(p.size for p in run),
                         b"".join(base64.b64decode(p.md5) for p in run), run[0].size))
    return out


class TransferGone(Exception):
    """The receiver no longer takes this transfer (aborted, or S3 lost it)."""


class StreamCount:
    """
    The number of streams: starts at C{start} (clamped to C{[low, high]});
    every C{window} seconds L{sample} gets the bytes sent so far and the
    streams running, and decides.  It doubles while every stream is busy
    and the rate grew by 25 % or more; every C{probe_every} steady windows
    it probes, alternately up (+25 %) and down (-25 %).  A change is on
    trial until it shows: C{judge_after} windows later (the sender counts
    a stream's bytes only from the window after it was first seen, so the
    window right after a growth shows the streams there before) and, for
    fewer streams, once the streams above the new count have ended (they
    end between ranges).  More streams that did not bring 10 % more, or
    fewer that lost more than 10 %, go back to the count before.
    """

    def __init__(self, low: int, high: int, probe_every: int = 4, *, start: int | None = None,
                 judge_after: int = 1) -> None:
        self.low, self.high = low, high
        self.limit = min(high, max(low, start if start is not None else low))
        self._judge_after = judge_after
        self._wait = 0
        self._trial: tuple[int, float] | None = None  # (limit, rate) before the change on trial
        self._last_rate = 0.0
        self._sent = 0
        self._steady = 0
        self._probe_every = probe_every
        self._probe_up = True
        #: Windows in which every stream was busy (the count was measured).
        self.measured = 0

    @property
    def settled(self) -> int:
        """The count the measurements support (not one still on trial)."""
        return self._trial[0] if self._trial is not None else self.limit

    def sample(self, sent: int, seconds: float, busy: int) -> int:
        rate = (sent - self._sent) / seconds if seconds > 0 else 0.0
        self._sent = sent
        if busy >= self.limit:
            self.measured += 1
        if self._trial is not None:
            if self._wait > 0 or busy > self.limit:
                self._wait = max(0, self._wait - 1)
                return self.limit  # the change has not shown yet
            limit, before = self._trial
            self._trial = None
            self._steady = 0
            if self.limit > limit and rate < before * 1.1:
                # More streams did not bring more: back to fewer.
                self.limit = limit
                self._last_rate = rate
                return self.limit
            if self.limit < limit:
                if rate < before * 0.9:
                    self.limit = limit  # fewer carried less: back to more
                self._last_rate = rate
                return self.limit
        self._steady += 1
        # A doubling needs a clear gain: the measurement is noisy.
        grew = rate > 0 and rate >= self._last_rate * 1.25
        self._last_rate = rate
        if busy != self.limit:
            # Not all busy: nothing to learn about more.  More than the
            # count: the streams above it are ending their ranges first.
            return self.limit
        if self.limit < self.high and grew:
            self._change(self.limit * 2, rate)
        elif self._steady >= self._probe_every:
            up = self._probe_up and self.limit < self.high or self.limit <= self.low
            self._probe_up = not up
            step = max(1, self.limit // 4)
            self._change(self.limit + step if up else self.limit - step, rate)
        return self.limit

    def _change(self, limit: int, rate: float) -> None:
        limit = min(self.high, max(self.low, limit))
        if limit != self.limit:
            self._trial = (self.limit, rate)
            self._wait = self._judge_after
            self.limit = limit
        self._steady = 0


class StreamMemory:
    """
    Where the next transfer's stream count starts: the count the last one
    that measured the link settled at (files follow each other over the
    same link), at first C{start}.
    """

    def __init__(self, start: int) -> None:
        self.start = start

    def remember(self, count: StreamCount) -> None:
        if count.measured >= 2:
            self.start = count.settled


class ReceiverAccess:
    """
    The token and the receiver's address for one transfer.  L{get} waits
    for a usable token (asking the cloud through C{ask} when there is none
    or it nears its end); L{refused} drops one the receiver refused.
    """

    def __init__(self, clock: IReactorTime, ask: Callable[[], Awaitable[None]], override_url: str = "",
                 request_timeout: float = 120.0) -> None:
        self._clock = clock
        self._ask = ask
        self._override = override_url.rstrip("/")
        self._timeout = request_timeout
        self.token = ""
        self.url = ""
        self._expires = 0.0
        self._asked_at: float | None = None
        self._waiters: list[Deferred[None]] = []

    def authorized(self, token: str, url: str, expires_in: int) -> None:
        self.token, self._expires = token, self._clock.seconds() + expires_in
        self.url = url if not self._override else f"{self._override}/{url.rstrip('/').rsplit('/', 1)[-1]}/"
        self._asked_at = None
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def asking(self) -> None:
        """A request for a token is on its way already."""
        self._asked_at = self._clock.seconds()

    def refused(self, token: str) -> None:
        if token == self.token:
            self.token = ""

    def _usable(self) -> bool:
        return bool(self.token) and self._clock.seconds() < self._expires - 30

    async def get(self) -> tuple[str, str]:
        while not self._usable():
            now = self._clock.seconds()
            if self._asked_at is None or now - self._asked_at >= self._timeout:
                self._asked_at = now
                await self._ask()
            d: Deferred[None] = Deferred()
            self._waiters.append(d)
            timer = self._clock.callLater(self._timeout, _fire, d)
            try:
                await d
            finally:
                if timer.active():
                    timer.cancel()
        return self.url, self.token

    def close(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.cancel()


@dataclass
class StreamStats:
    """Counters the service exposes."""

    patches: int = 0
    resumes: int = 0
    stalls: int = 0
    bytes_sent: int = 0
    #: Bytes sent again that the receiver had already reported as in S3
    #: (must stay 0).
    resent_confirmed: int = 0


class StreamSender:
    """
    Sends one transfer's ranges (see the module docstring); L{run} fires
    with C{"done"} once the final upload is created.

    @param confirm: parts C{first}-C{last} up to a byte of the file are in S3
        (journal).
    @param open_body: the spool's bytes of a L{Part}, for one PATCH.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        target: ITusTarget,
        access: ReceiverAccess,
        todo: list[Range],
        all_ranges: list[Range],
        count: StreamCount,
        open_body: Callable[[Part], PartBody],
        confirm: Callable[[int, int, int], Awaitable[None]],
        stats: StreamStats,
        *,
        stall_timeout: float = 15.0,
        resumed: bool = False,
        window: float = 2.0,
        upload_id: str = "",
        slots: DeferredSemaphore | None = None,
    ) -> None:
        self._clock = clock
        self._target = target
        self._access = access
        self._queue = list(todo)
        self._all = all_ranges
        self._count = count
        self._open_body = open_body
        self._confirm = confirm
        self._stats = stats
        self._stall_timeout = stall_timeout
        self._resumed = resumed
        self._window = window
        self._upload_id = upload_id
        # Shared by every file's sender: the link is one, whatever the
        # number of files being sent at once.
        self._slots = slots if slots is not None else DeferredSemaphore(count.high)
        self._workers: dict[int, Deferred[None]] = {}
        self._next_worker = 0
        self._in_flight: dict[int, PartBody] = {}
        #: Bytes written by PATCHes after they were first seen, and what
        #: each in flight had written when last seen.
        self._steady_sent = 0
        self._last_steady = 0
        self._seen: dict[int, int] = {}
        self._bursts: dict[int, int] = {}
        self._confirmed_end: dict[int, int] = {}
        self._error: BaseException | None = None
        self._done: Deferred[None] = Deferred()
        self._timer: IDelayedCall | None = None
        self._stopped = False

    # -- the whole --------------------------------------------------------------

    async def run(self) -> str:
        self._spawn()
        self._timer = self._clock.callLater(self._window / 2, self._first_look)
        try:
            if self._workers:
                await self._done
        finally:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
        if self._error is not None:
            raise self._error
        if self._stopped:
            raise CancelledError()
        await self._final()
        return "done"

    def stop(self) -> None:
        self._stopped = True
        for d in list(self._workers.values()):
            d.cancel()

    def _look(self) -> None:
        """Count the bytes each PATCH wrote since it was last seen."""
        for key, body in self._in_flight.items():
            if key in self._seen:
                self._steady_sent += body.sent - self._seen[key]
            else:
                self._bursts[key] = body.sent
            self._seen[key] = body.sent

    def _first_look(self) -> None:
        self._look()
        self._timer = self._clock.callLater(self._window, self._tick)

    def _tick(self) -> None:
        # A PATCH's first bytes fill the buffers on the way at the speed of
        # the machine (on the emulated link over a MiB): its bytes count
        # from when it was first seen, and those first ones once it is
        # answered (they have arrived then), not when they were written.
        self._look()
        before, busy = self._count.limit, len(self._workers)
        rate = (self._steady_sent - self._last_steady) / self._window
        self._last_steady = self._steady_sent
        if self._count.sample(self._steady_sent, self._window, busy) != before:
            self.log.info("upload {upload_id}: {limit} streams ({busy} busy, {rate:.0f} KiB/s)",
                          upload_id=self._upload_id, limit=self._count.limit, busy=busy, rate=rate / 1024)
        self._spawn()
        self._timer = self._clock.callLater(self._window, self._tick)

    def _spawn(self) -> None:
        while self._queue and len(self._workers) < self._count.limit and not self._stopped and self._error is None:
            number = self._next_worker
            self._next_worker += 1
            d = Deferred.fromCoroutine(self._worker(number))
            self._workers[number] = d
            d.addBoth(self._worker_over, number)

    def _worker_over(self, result: Any, number: int) -> None:
        self._workers.pop(number, None)
        if isinstance(result, BaseException) or hasattr(result, "value"):
            error = getattr(result, "value", result)
            if self._error is None and not self._stopped and not isinstance(error, CancelledError):
                self._error = error
                for d in list(self._workers.values()):
                    d.cancel()
        self._spawn()
        if not self._workers and not self._done.called:
            self._done.callback(None)

    async def _worker(self, number: int) -> None:
        while self._queue and not self._stopped:
            if len(self._workers) > self._count.limit:
                return  # fewer streams now: this one ends between ranges
            await self._slots.acquire()
            try:
                if not self._queue or self._stopped:
                    return
                await self._range(self._queue.pop(0))
            finally:
                self._slots.release()

    # -- one range ---------------------------------------------------------------

    async def _range(self, r: Range) -> None:
        backoff = Backoff(self._clock, initial=0.5, cap=10.0, jitter="full")
        known = self._resumed
        offset: int | None = None
        while not self._stopped:
            url, token = await self._access.get()
            member = f"{url}{r.first}"
            patch_started: float | None = None
            try:
                if offset is None:
                    if known:
                        answer = await self._target.request("HEAD", member, headers(token), None)
                        if answer.status == 404:
                            # Not created yet, or the transfer is gone:
                            # the creation tells (it is idempotent).
                            known = False
                            continue
                    else:
                        answer = await self._target.request(
                            "POST", url, creation_headers(token, r.first, r.last, r.length, r.md5s), None)
                        if answer.status == 201:
                            answer = TusResponse(201, 0)
                    if not self._judge(answer, token):
                        await self._pause(backoff)
                        continue
                    known = True
                    offset = answer.offset or 0
                    await self._confirmed(r, offset)
                if offset >= r.length:
                    return
                patch_started = self._clock.seconds()
                answer = await self._patch(member, token, r, offset)
            except (CancelledError, StagedCopyDamaged, TransferGone):
                raise
            except Exception as e:
                if isinstance(e, (ValueError, TypeError, AttributeError, KeyError)):
                    self.log.failure("upload {upload_id} range {first}", upload_id=self._upload_id, first=r.first)
                else:
                    self.log.debug("upload {upload_id} range {first}: {error}", upload_id=self._upload_id,
                                   first=r.first, error=type(e).__name__)
                if patch_started is not None and self._clock.seconds() - patch_started >= HEALTHY_PATCH:
                    # A PATCH that carried bytes a while broke (a reset):
                    # the link works, reconnect at once.  Without this a
                    # range reset every 20 s waited up to 10 s each time.
                    backoff.proven()
                self._stats.resumes += 1
                offset = None
                known = True
                await self._pause(backoff)
                continue
            if answer.status == 204 and answer.offset is not None:
                if answer.offset > offset:
                    backoff.proven()
                offset = answer.offset
                await self._confirmed(r, offset)
                continue
            self._judge(answer, token)
            self._stats.resumes += 1
            offset = None
            known = True
            if answer.status not in (409, 460):
                await self._pause(backoff)

    def _judge(self, answer: TusResponse, token: str) -> bool:
        """Whether C{answer} tells where the upload stands; raises for the end of the transfer."""
        if answer.status in (200, 201, 204):
            return True
        if answer.status == 401:
            self._access.refused(token)
        elif answer.status in (403, 404):
            raise TransferGone(f"the receiver answered {answer.status}: {answer.reason}")
        elif answer.status not in (409, 423, 460) and answer.status < 500:
            self.log.warn("upload {upload_id}: the receiver answered {status}: {reason}",
                          upload_id=self._upload_id, status=answer.status, reason=answer.reason)
        return False

    async def _pause(self, backoff: Backoff) -> None:
        await deferLater(self._clock, backoff.next_delay(), lambda: None)

    async def _confirmed(self, r: Range, offset: int) -> None:
        if offset >= self._confirmed_end.get(r.first, 0):
            self._confirmed_end[r.first] = offset
            await self._confirm(r.first, r.last, r.offset + offset)

    async def _patch(self, url: str, token: str, r: Range, offset: int) -> TusResponse:
        # Everything the receiver reported as stored lies below the offset
        # it reported last: anything sent from lower down is waste.
        self._stats.resent_confirmed += max(0, self._durable(r) - offset)
        body = self._open_body(Part(r.first, r.offset + offset, r.length - offset))
        key = id(body)
        self._in_flight[key] = body
        self._stats.patches += 1
        d = self._target.request("PATCH", url, patch_headers(token, offset), body)
        stalled = [False]

        def watch() -> None:
            # Once the body is written, the buffers on the way (over a MiB)
            # drain at the stream's share of the link with no progress to
            # see: on a thin link shared by many streams that takes longer.
            limit = self._stall_timeout * (DRAINING_STALL_FACTOR if body.sent >= body.length else 1)
            if self._clock.seconds() - body.last_progress >= limit:
                stalled[0] = True
                d.cancel()
            else:
                watchdog[0] = self._clock.callLater(1.0, watch)

        watchdog = [self._clock.callLater(1.0, watch)]
        answered = False
        try:
            answer = await d
            answered = True
            return answer
        except Exception as e:
            if body.damage is not None:
                raise StagedCopyDamaged(f"range {r.first}: {body.damage}") from e
            if stalled[0]:
                self._stats.stalls += 1
                raise TimeoutError("no progress") from e
            if _cancelled(e):
                raise CancelledError() from e
            raise
        finally:
            del self._in_flight[key]
            if key in self._seen:
                self._steady_sent += body.sent - self._seen.pop(key)
            burst = self._bursts.pop(key, 0)
            if answered:
                # The bytes it wrote at once have arrived by now.
                self._steady_sent += burst
            self._stats.bytes_sent += body.sent
            if watchdog[0].active():
                watchdog[0].cancel()
            body.stopProducing()

    def _durable(self, r: Range) -> int:
        """Bytes of C{r} in whole parts below the last offset the receiver reported."""
        reported = self._confirmed_end.get(r.first, 0)
        if reported >= r.length or not r.part_size:
            return reported
        return (reported // r.part_size) * r.part_size

    # -- the end -------------------------------------------------------------------

    async def _final(self) -> None:
        backoff = Backoff(self._clock, initial=0.5, cap=10.0, jitter="full")
        while not self._stopped:
            url, token = await self._access.get()
            path = url.split("://", 1)[-1]
            base = path[path.index("/"):] if "/" in path else "/"
            concat = final_concat(f"{base}{r.first}" for r in self._all)
            try:
                answer = await self._target.request("POST", url, headers(token, Upload_Concat=concat), None)
            except CancelledError:
                raise
            except Exception:
                await self._pause(backoff)
                continue
            if answer.status == 201:
                return
            if answer.status == 400:
                raise TransferGone(f"the receiver refused the final upload: {answer.reason}")
            self._judge(answer, token)
            await self._pause(backoff)
        raise CancelledError()


def _fire(d: Deferred[None]) -> None:
    if not d.called:
        d.callback(None)


def _cancelled(error: BaseException) -> bool:
    if isinstance(error, CancelledError):
        return True
    return any(reason.check(CancelledError) for reason in getattr(error, "reasons", ()) or ())
