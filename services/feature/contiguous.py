"""A faust consumer that hands the agent every partition's offsets in order, none skipped.

Why: faust-streaming loses prefetched messages around a rebalance (its issues 216 and
221). After a rebalance it seeks each partition to its committed offset, but it does so
while the fetcher runs: records fetched before the seek are still handed over after it.
faust's fetcher tracks a "read offset" per partition, drops a record below it and treats
a jump above it as a gap of acknowledged offsets. A stale record seen after the seek makes
the re-read records after it look old (dropped), or a re-read record after stale ones makes
the skipped stretch look like a gap (acknowledged, so the commit moves past it). Either way
some events are never applied, and the commit makes that permanent.

The fix holds one invariant where records enter faust, before any of that bookkeeping:
for each partition of an acknowledged topic, the records passed on since the last seek to
committed offsets are exactly ``start, start + 1, ...``, where ``start`` is the committed
offset (0 when nothing is committed). :class:`OffsetGuard` keeps it:

- A rebalance forgets every partition's position; nothing of a partition passes until the
  seek to committed offsets that follows every rebalance sets ``start``.
- A record below the next expected offset was already passed on since that seek: dropped.
- A record above it means records were skipped (stale records, or a position moved under
  the seek): dropped, and the partition is sought back to the expected offset; the rest of
  that fetch is stale. If a fetch made after that seek still starts above it, the records
  are really gone from the log (retention, compaction) and the jump is accepted, as a gap.

So each partition's events reach the agent in offset order with none missing (a redelivery
after a later seek to committed offsets repeats events, which event-id deduplication makes
harmless). Downstream of the fetcher faust only discards events during a rebalance, and
every rebalance ends in a seek to committed offsets, which re-reads them: everything below
a committed offset was acknowledged, and only applied events are acknowledged, in order.
faust's own read-offset check and gap bookkeeping are switched off for these topics: with
the records contiguous they have nothing to find, and after a seek they would misfire.

The guard alone is not enough: between the fetcher and the agent, faust's stream drops a
message delivered while flow control is off or from an older consumer generation, which
happens around every rebalance. Such a message is never acknowledged, so the commit
stops short of it, but the events after it were applied, and a user's state counts every
offset up to its newest applied one as applied: when the dropped event came back on a
later replay it read as a duplicate, and it was lost (the rebalance test caught 9 users
missing 12-27 events each). So the agent admits each partition's events contiguously too
(:meth:`ContiguousConsumer.admit`): an event after a hole is not applied, the partition
is read again from the hole, and the events not applied are not acknowledged (faust
acknowledges a whole batch once the agent returns). A hole is seen when a later event of
its partition arrives; when none does (a dropped event was the last before a quiet
spell), a periodic check reads the partition again once its handed-on events have not
reached the agent for a while (:meth:`ContiguousConsumer.read_stalled_again`). It caught
one such stall in a running worker (an event held 5 s, then read again), and is the
likely cause of a restarted worker sitting 180 s on its last two events in one CI run.

Plugged in as the transport's consumer class (services/feature/transport.py), not
patched into faust.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from aiokafka.errors import IllegalStateError  # type: ignore[import-untyped]
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

log = logging.getLogger(__name__)


class Verdict(enum.Enum):
    PASS = "pass"  # the next offset: hand it on
    DROP = "drop"  # before the start, already handed on, or stale
    SEEK_BACK = "seek back"  # records skipped: seek to expected(tp), drop the rest of the fetch
    GAP = "gap"  # a fetch from expected(tp) starts later: offsets missing from the log


class OffsetGuard:
    """Which records of each partition may be handed on, so that they stay contiguous."""

    def __init__(self) -> None:
        self._next: dict[TP, int] = {}  # next offset to hand on; absent: no start yet
        self._sought_back: set[TP] = set()  # sought back to _next, next fetch not seen yet
        self._stale: set[TP] = set()  # sought back during the current fetch
        self._dropped_unstarted: set[TP] = set()  # records dropped while no start was known

    def forget(self) -> None:
        """A rebalance: no partition passes until :meth:`start` is called for it."""
        self._next.clear()
        self._sought_back.clear()
        self._stale.clear()
        self._dropped_unstarted.clear()

    def start(self, tp: TP, offset: int) -> bool:
        """The consumer was sought to ``offset``: hand on ``offset`` next.

        Returns whether records of ``tp`` were dropped for want of a start. The seek runs
        on the consumer's thread, so records fetched from the new position can arrive
        before the start is known; if so, the partition must be sought to ``offset`` again
        or they are never handed on.
        """
        self._next[tp] = offset
        self._sought_back.discard(tp)
        if tp in self._dropped_unstarted:
            self._dropped_unstarted.discard(tp)
            return True
        return False

    def new_fetch(self) -> None:
        """The records that follow were fetched after every seek made so far."""
        self._stale.clear()

    def expected(self, tp: TP) -> int | None:
        return self._next.get(tp)

    def handed_on(self) -> dict[TP, int]:
        """Per started partition, the offset after the last record handed on."""
        return dict(self._next)

    def check(self, tp: TP, offset: int) -> Verdict:
        expected = self._next.get(tp)
        if expected is None:
            self._dropped_unstarted.add(tp)
            return Verdict.DROP
        if offset < expected or tp in self._stale:
            return Verdict.DROP
        verdict = Verdict.PASS
        if offset > expected:
            if tp not in self._sought_back:
                self._sought_back.add(tp)
                self._stale.add(tp)
                return Verdict.SEEK_BACK
            verdict = Verdict.GAP
        self._sought_back.discard(tp)
        self._next[tp] = offset + 1
        return verdict

    def seek_failed(self, tp: TP) -> None:
        """The seek back did not happen: the next jump must try again."""
        self._sought_back.discard(tp)


class AppliedOffsets:
    """Which events the agent may apply, so that each partition is applied contiguously.

    ``next`` is the next offset to apply per partition, set by every seek to committed
    offsets; an event below it was applied already (a redelivery), one above it follows a
    hole: a message faust dropped on its way to the agent.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._next: dict[TP, int] = {}
        self._rewinding: dict[TP, int] = {}  # partition -> offset it is being read from again
        self._gaps: dict[TP, int] = {}  # partition -> offset the guard accepted after a gap
        self._since: dict[TP, float] = {}  # partition -> last start, progress or stall re-read

    def forget(self) -> None:
        self._next.clear()
        self._rewinding.clear()
        self._gaps.clear()
        self._since.clear()

    def start(self, tp: TP, offset: int) -> None:
        self._next[tp] = offset
        self._rewinding.pop(tp, None)
        self._gaps.pop(tp, None)
        self._since[tp] = self._clock()

    def gap_accepted(self, tp: TP, offset: int) -> None:
        """The guard accepted a jump to ``offset``: the offsets before it are not in the log."""
        self._gaps[tp] = offset

    def admit(self, tp: TP, offset: int) -> bool | None:
        """True: apply it. False: applied before. None: after a hole (or before any start),
        not applied now; :meth:`hole` says where to read again from."""
        expected = self._next.get(tp)
        if expected is None:
            return None
        if offset < expected:
            return False
        if offset > expected:
            if self._gaps.get(tp) != offset:
                return None
            del self._gaps[tp]
        self._next[tp] = offset + 1
        self._rewinding.pop(tp, None)
        self._since[tp] = self._clock()
        return True

    def hole(self, tp: TP) -> int | None:
        """Where ``tp`` must be read again from, or None (no start yet, or a read from
        there is already under way)."""
        expected = self._next.get(tp)
        if expected is None or self._rewinding.get(tp) == expected:
            return None
        self._rewinding[tp] = expected
        return expected

    def rewind_failed(self, tp: TP) -> None:
        self._rewinding.pop(tp, None)

    def stalled(self, handed_on: Mapping[TP, int], after_s: float) -> list[tuple[TP, int]]:
        """Partitions to read again, with the offset to read from: records up to
        ``handed_on[tp]`` passed the guard, the next one to apply is below it, and nothing
        was applied for ``after_s`` seconds.

        A message faust drops on its way to the agent is found as a hole when a later one
        of its partition arrives; when none arrives (the last events before a quiet spell),
        only the wait finds it. Each stalled partition is
        reported once per ``after_s`` until it moves again.
        """
        now = self._clock()
        stalled: list[tuple[TP, int]] = []
        for tp, expected in self._next.items():
            passed = handed_on.get(tp)
            if passed is None or passed <= expected:
                continue  # everything handed on was applied
            if now - self._since.get(tp, now) < after_s:
                continue
            self._rewinding[tp] = expected
            self._since[tp] = now
            stalled.append((tp, expected))
        return stalled


class ContiguousConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer, passing each acknowledged partition's offsets contiguously."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard = OffsetGuard()
        self._applied = AppliedOffsets()
        # Messages the agent did not apply: their acknowledgement must not count.
        self._not_applied: weakref.WeakSet[Message] = weakref.WeakSet()

    def _guarded(self, tp: TP) -> bool:
        return self.app.topics.acks_enabled_for(tp.topic)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self._guard.forget()
        self._applied.forget()
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        # Also here: a seek made while the flow was stopped mid-rebalance saw the old assignment.
        self._guard.forget()
        self._applied.forget()
        await super().on_partitions_assigned(assigned, generation_id)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        # faust's perform_seek() calls this and then resets its read offsets, with no await
        # in between: the new starting points take effect together with faust's.
        committed = await super().seek_to_committed()
        read_again: dict[TP, int] = {}
        starts: dict[str, int] = {}
        for tp, offset in committed.items():
            if self._guarded(tp):
                # Nothing committed: from offset 0. Where the log starts later, the consumer
                # starts there (auto_offset_reset "earliest"), and after one seek back to 0
                # the guard takes the jump for offsets gone from the log.
                start = offset if offset is not None and offset > 0 else 0
                starts[f"{tp.topic}/{tp.partition}"] = start
                self._applied.start(tp, start)
                if self._guard.start(tp, start):
                    read_again[tp] = start
        if starts:
            log.info("reading from committed offsets", extra={"offsets": starts})
        if read_again:
            # Records were dropped while the seek was in flight; some may have come from
            # the new position (a restarted worker stalled on exactly that). Read them again.
            log.info("re-reading records fetched during the seek", extra={"tps": str(read_again)})
            # (IllegalStateError: no longer assigned; the rebalance under way seeks it again)
            with contextlib.suppress(IllegalStateError):
                await self.seek_wait(read_again)
        return committed

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:  # noqa: ASYNC109 (faust's signature)
        guard = self._guard
        guard.new_fetch()
        async for tp, message in super().getmany(timeout):
            if self._guarded(tp):
                expected = guard.expected(tp)
                verdict = guard.check(tp, message.offset)
                if verdict is Verdict.DROP:
                    continue
                assert expected is not None
                if verdict is Verdict.SEEK_BACK:
                    await self._seek_back(tp, expected, message.offset)
                    continue
                if verdict is Verdict.GAP:
                    log.warning(
                        "offsets missing from the log",
                        extra={"tp": str(tp), "first": expected, "last": message.offset - 1},
                    )
                    await super()._add_gap(tp, expected, message.offset - 1)
                    self._applied.gap_accepted(tp, message.offset)
                # faust's read-offset check would drop the records re-read after a seek.
                self._read_offset[tp] = None
            yield tp, message

    async def admit(self, messages: Sequence[Message]) -> list[bool]:
        """Which of a batch's messages (each partition's in offset order) the agent is to
        apply. One after a hole is not: its partition is read again from the hole, and the
        message is not acknowledged (so no commit passes it before it is applied)."""
        verdicts: list[bool] = []
        holes: set[TP] = set()
        for message in messages:
            tp = message.tp
            if not self._guarded(tp):
                verdicts.append(True)
                continue
            admitted = self._applied.admit(tp, message.offset)
            if admitted is None:
                self._not_applied.add(message)
                holes.add(tp)
            verdicts.append(bool(admitted))
        for tp in holes:
            offset = self._applied.hole(tp)
            if offset is None:
                continue
            log.info(
                "events dropped before the agent; reading again",
                extra={"tp": str(tp), "offset": offset},
            )
            await self._read_again(tp, offset)
        return verdicts

    async def read_stalled_again(self, after_s: float) -> None:
        """Read again each partition whose handed-on events have not reached the agent
        for ``after_s`` seconds (see :meth:`AppliedOffsets.stalled`)."""
        for tp, offset in self._applied.stalled(self._guard.handed_on(), after_s):
            log.warning(
                "events handed on but not applied; reading again",
                extra={"tp": str(tp), "offset": offset, "after_s": after_s},
            )
            await self._read_again(tp, offset)

    async def _read_again(self, tp: TP, offset: int) -> None:
        """Hand ``tp`` on from ``offset`` again, where the agent is to apply it next."""
        self._guard.start(tp, offset)
        try:
            await self.seek_wait({tp: offset})
        except IllegalStateError:
            # No longer assigned: the rebalance under way seeks it again.
            self._applied.rewind_failed(tp)

    def ack(self, message: Message) -> bool:
        # Emptiness first: a WeakSet lookup builds a weak reference, on every message.
        if not self._not_applied or message not in self._not_applied:
            return bool(super().ack(message))
        # Settled as far as faust's bookkeeping goes (nothing waits on it), but its offset
        # is not counted as done: the message comes again when its partition is re-read.
        with ack_lock:
            self._not_applied.discard(message)
            message.acked = True
            self._unacked_messages.discard(message)
            notify(self._waiting_for_ack)
        return False

    async def _seek_back(self, tp: TP, expected: int, offset: int) -> None:
        log.info(
            "records skipped; seeking back",
            extra={"tp": str(tp), "expected": expected, "offset": offset},
        )
        try:
            await self.seek_wait({tp: expected})
        except IllegalStateError:
            # No longer assigned: a rebalance is under way and will seek it again.
            self._guard.seek_failed(tp)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        # The fetcher's gaps come from its read offsets, which are off for guarded topics.
        if not self._guarded(tp):
            await super()._add_gap(tp, offset_from, offset_to)
