"""The feature consumer's offset guard: each partition's records are handed on
contiguously from the offset last sought to, across stale records and rebalances; and
the agent applies each partition's events contiguously, across messages faust drops."""

from __future__ import annotations

from faust.types import TP

from services.feature.contiguous import AppliedOffsets, OffsetGuard, Verdict

P0 = TP("interactions", 0)
P1 = TP("interactions", 1)


def _handed_on(guard: OffsetGuard, tp: TP, offsets: range | list[int]) -> list[int]:
    return [o for o in offsets if guard.check(tp, o) in (Verdict.PASS, Verdict.GAP)]


def test_nothing_passes_before_the_seek_that_follows_a_rebalance() -> None:
    guard = OffsetGuard()
    assert _handed_on(guard, P0, range(10, 15)) == []
    guard.start(P0, 10)
    assert _handed_on(guard, P0, range(10, 15)) == [10, 11, 12, 13, 14]
    guard.forget()  # a rebalance: the committed offset may have moved on elsewhere
    assert _handed_on(guard, P0, range(15, 20)) == []
    assert _handed_on(guard, P1, range(0, 3)) == []


def test_records_already_handed_on_since_the_seek_are_dropped() -> None:
    """Records fetched before the seek to committed offsets, then the re-read from it."""
    guard = OffsetGuard()
    guard.start(P0, 426)
    assert _handed_on(guard, P0, range(426, 461)) == list(range(426, 461))
    guard.new_fetch()
    assert _handed_on(guard, P0, range(426, 470)) == list(range(461, 470))


def test_a_jump_seeks_back_and_the_rest_of_that_fetch_is_stale() -> None:
    """faust 216/221: after the seek to 426, a stale record 478 must not pass, nor open a gap."""
    guard = OffsetGuard()
    guard.start(P0, 426)
    assert guard.check(P0, 478) is Verdict.SEEK_BACK
    assert guard.expected(P0) == 426
    assert _handed_on(guard, P0, [479, 480, 426]) == []  # the rest of that fetch
    assert guard.check(P1, 0) is Verdict.DROP  # other partitions are unaffected (no start)
    guard.new_fetch()  # fetched after the seek back: from 426
    assert _handed_on(guard, P0, range(426, 481)) == list(range(426, 481))


def test_offsets_missing_from_the_log_are_accepted_after_one_seek_back() -> None:
    guard = OffsetGuard()
    guard.start(P0, 100)
    assert guard.check(P0, 150) is Verdict.SEEK_BACK
    guard.new_fetch()
    # A fetch from 100 that starts at 150: 100..149 are gone (retention, compaction).
    assert guard.check(P0, 150) is Verdict.GAP
    assert _handed_on(guard, P0, [151, 152]) == [151, 152]
    # A later jump seeks back again first.
    guard.new_fetch()
    assert guard.check(P0, 160) is Verdict.SEEK_BACK


def test_a_failed_seek_back_is_retried() -> None:
    guard = OffsetGuard()
    guard.start(P0, 5)
    assert guard.check(P0, 9) is Verdict.SEEK_BACK
    guard.seek_failed(P0)
    guard.new_fetch()
    assert guard.check(P0, 9) is Verdict.SEEK_BACK  # not taken for a gap in the log


def test_a_new_seek_restarts_the_partition() -> None:
    guard = OffsetGuard()
    guard.start(P0, 0)
    assert _handed_on(guard, P0, range(0, 50)) == list(range(50))
    guard.start(P0, 20)  # seek to committed offsets again: re-read from 20
    assert _handed_on(guard, P0, range(20, 25)) == list(range(20, 25))
    assert guard.check(P0, 30) is Verdict.SEEK_BACK


def test_records_dropped_before_the_start_is_known_are_read_again() -> None:
    """The seek runs on the consumer thread: records from the new position can arrive before
    the guard learns the start. They are dropped, and the start says to seek again."""
    guard = OffsetGuard()
    assert _handed_on(guard, P1, [51, 52]) == []
    assert guard.start(P1, 51) is True  # seek to 51 again, or 51 and 52 are never applied
    assert guard.start(P0, 71) is False  # nothing of P0 was dropped
    assert _handed_on(guard, P1, [51, 52, 53]) == [51, 52, 53]
    assert guard.start(P1, 51) is False  # a later seek with no drops: nothing to re-read
    guard.forget()
    assert _handed_on(guard, P1, [60]) == []
    guard.forget()  # a rebalance also forgets the drops: its own seek re-reads them
    assert guard.start(P1, 60) is False


def _applied(applied: AppliedOffsets, tp: TP, offsets: range | list[int]) -> list[int]:
    return [o for o in offsets if applied.admit(tp, o)]


def test_an_event_after_a_dropped_one_waits_for_the_partition_to_be_read_again() -> None:
    """The rebalance test's loss: faust dropped 385 on its way to the agent, 386.. came on."""
    applied = AppliedOffsets()
    applied.start(P0, 218)
    assert _applied(applied, P0, range(218, 385)) == list(range(218, 385))
    assert applied.admit(P0, 386) is None  # not applied, and not a duplicate either
    assert applied.hole(P0) == 385
    assert applied.hole(P0) is None  # one read again per hole, not one per event
    assert _applied(applied, P0, range(387, 400)) == []
    # The partition read again from 385: in order, nothing applied twice.
    assert _applied(applied, P0, range(385, 400)) == list(range(385, 400))
    assert applied.admit(P0, 300) is False  # a redelivery of an applied event


def test_a_second_hole_after_the_read_again_is_reported_again() -> None:
    applied = AppliedOffsets()
    applied.start(P0, 0)
    assert applied.admit(P0, 2) is None
    assert applied.hole(P0) == 0
    assert _applied(applied, P0, range(0, 5)) == [0, 1, 2, 3, 4]
    assert applied.admit(P0, 7) is None
    assert applied.hole(P0) == 5


def test_a_failed_read_again_is_retried_on_the_next_event() -> None:
    applied = AppliedOffsets()
    applied.start(P0, 10)
    assert applied.admit(P0, 12) is None
    assert applied.hole(P0) == 10
    applied.rewind_failed(P0)
    assert applied.admit(P0, 13) is None
    assert applied.hole(P0) == 10


def test_nothing_is_applied_between_a_rebalance_and_its_seek() -> None:
    """Messages of the old generation still in flight wait for the seek to committed."""
    applied = AppliedOffsets()
    applied.start(P0, 0)
    assert _applied(applied, P0, range(0, 3)) == [0, 1, 2]
    applied.forget()
    assert applied.admit(P0, 3) is None
    assert applied.hole(P0) is None  # the seek that follows the rebalance reads it again
    applied.start(P0, 3)
    assert _applied(applied, P0, range(3, 6)) == [3, 4, 5]
    assert applied.admit(P1, 0) is None  # another partition: no start yet


def test_a_gap_the_guard_accepted_is_not_a_hole() -> None:
    """Offsets gone from the log (retention, compaction) never come: apply across them."""
    applied = AppliedOffsets()
    applied.start(P0, 100)
    applied.gap_accepted(P0, 150)
    assert _applied(applied, P0, [150, 151]) == [150, 151]
    assert applied.admit(P0, 160) is None  # only that one jump was accepted
    applied.start(P0, 100)  # a new seek forgets the accepted gap
    applied.gap_accepted(P0, 150)
    applied.start(P0, 100)
    assert applied.admit(P0, 150) is None


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_events_handed_on_but_never_applied_are_read_again_after_the_wait() -> None:
    """The restart test's stall: faust dropped the partition's last two events on their
    way to the agent and no later event came to reveal the hole."""
    clock = _Clock()
    guard, applied = OffsetGuard(), AppliedOffsets(clock)
    guard.start(P1, 50)
    applied.start(P1, 50)
    assert _handed_on(guard, P1, [50, 51]) == [50, 51]  # passed on, then dropped by faust
    clock.now += 4.9
    assert applied.stalled(guard.handed_on(), after_s=5.0) == []  # may still be on its way
    clock.now += 0.2
    assert applied.stalled(guard.handed_on(), after_s=5.0) == [(P1, 50)]
    assert applied.hole(P1) is None  # that read again is under way
    guard.start(P1, 50)  # as read_stalled_again does
    clock.now += 1.0
    assert applied.stalled(guard.handed_on(), after_s=5.0) == []
    assert _handed_on(guard, P1, [50, 51]) == [50, 51]
    assert _applied(applied, P1, [50, 51]) == [50, 51]
    clock.now += 60.0
    assert applied.stalled(guard.handed_on(), after_s=5.0) == []  # all applied: idle


def test_a_partition_still_applying_is_not_read_again() -> None:
    clock = _Clock()
    guard, applied = OffsetGuard(), AppliedOffsets(clock)
    guard.start(P0, 0)
    applied.start(P0, 0)
    assert _handed_on(guard, P0, range(0, 100)) == list(range(100))
    for offset in range(0, 90):  # a slow agent, but moving
        clock.now += 1.0
        assert applied.admit(P0, offset) is True
        assert applied.stalled(guard.handed_on(), after_s=5.0) == []


def test_a_stalled_partition_is_reported_again_if_the_read_again_is_lost_too() -> None:
    clock = _Clock()
    guard, applied = OffsetGuard(), AppliedOffsets(clock)
    guard.start(P0, 7)
    applied.start(P0, 7)
    assert _handed_on(guard, P0, [7]) == [7]
    clock.now += 6.0
    assert applied.stalled(guard.handed_on(), after_s=5.0) == [(P0, 7)]
    guard.start(P0, 7)
    assert _handed_on(guard, P0, [7]) == [7]  # read again, and dropped again
    clock.now += 6.0
    assert applied.stalled(guard.handed_on(), after_s=5.0) == [(P0, 7)]
    applied.forget()  # a rebalance: its seek to committed offsets takes over
    clock.now += 60.0
    assert applied.stalled(guard.handed_on(), after_s=5.0) == []
