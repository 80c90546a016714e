"""BoardTrust: the board is trusted only while every known worker announces itself."""

from __future__ import annotations

from slo_scoreboard.roster import STALE_AFTER_S, BoardTrust, Roster, WorkerStatus

TTL_S = 10.0


def roster(now_s: float, *workers: tuple[str, float, bool]) -> Roster:
    return Roster(now_s, [WorkerStatus(name, seen_s, plans) for name, seen_s, plans in workers])


def listened(trust: BoardTrust, start_s: float = 100.0) -> float:
    """Past the governor's first second, when it learns who is live; returns then."""
    assert trust.distrust(roster(start_s)) == "learning which gateway workers are live"
    return start_s + STALE_AFTER_S


def keep_reading(trust: BoardTrust, from_s: float, to_s: float, *live: tuple[str, bool]) -> float:
    """The governor reads every 0.1 s from `from_s` to about `to_s`, the `live` workers
    announcing as it does; returns the time of its last read."""
    now_s = from_s
    while now_s + 0.1 < to_s:
        now_s += 0.1
        trust.distrust(roster(now_s, *((name, now_s, plans) for name, plans in live)))
    return now_s


def test_fresh_planning_workers_are_trusted_and_a_silent_one_is_not():
    trust = BoardTrust(forget_after_s=TTL_S)
    now_s = listened(trust)
    assert trust.distrust(roster(now_s, ("a", now_s - 0.2, True), ("b", now_s, True))) is None
    later_s = now_s + 2.0  # b stops announcing (it lost Redis, or stalled)
    why = trust.distrust(roster(later_s, ("a", later_s, True), ("b", now_s, True)))
    assert why == "gateway worker b silent for 2.0 s"
    # b's announcement vanished with a restarted Redis: still known, still distrusted.
    assert trust.distrust(roster(later_s, ("a", later_s, True))) == (
        "gateway worker b is missing from the roster"
    )


def test_a_worker_silent_past_the_entry_ttl_is_forgotten_its_entries_expired_with_it():
    trust = BoardTrust(forget_after_s=TTL_S)
    now_s = listened(trust)
    trust.distrust(roster(now_s, ("a", now_s, True), ("dead", now_s, True)))
    last_words_s = now_s
    read_s = keep_reading(trust, now_s, now_s + TTL_S, ("a", True))
    assert trust.distrust(roster(read_s, ("a", read_s, True), ("dead", last_words_s, True))) == (
        f"gateway worker dead silent for {read_s - last_words_s:.1f} s"
    )
    late_s = read_s + 0.2  # a whole TTL silent: forgotten
    assert trust.distrust(roster(late_s, ("a", late_s, True))) is None


def test_after_its_own_outage_only_announcements_made_since_count():
    trust = BoardTrust(forget_after_s=TTL_S)
    now_s = listened(trust)
    assert trust.distrust(roster(now_s, ("a", now_s, True))) is None
    trust.unreadable()
    back_s = now_s + 0.5  # a's last word is fresh, but from before the outage
    assert trust.distrust(roster(back_s, ("a", back_s - 0.1, True))) is not None
    assert trust.distrust(roster(back_s + 0.1, ("a", back_s + 0.05, True))) is None


def test_a_worker_that_admits_without_planning_pins_the_clock():
    trust = BoardTrust(forget_after_s=TTL_S)
    now_s = listened(trust)
    why = trust.distrust(roster(now_s, ("a", now_s, True), ("b", now_s, False)))
    assert why == "gateway worker b admits without planning"


def test_entries_of_a_worker_that_never_announced_itself_are_not_trusted():
    trust = BoardTrust(forget_after_s=TTL_S)
    now_s = listened(trust)
    current = roster(now_s, ("a", now_s, True))
    assert trust.distrust(current, owners=["a", "a", ""]) is None
    assert trust.distrust(current, owners=["a", "old"]) == (
        "entries of gateway worker old, which never announced itself"
    )


def test_a_gap_in_the_governors_reads_counts_as_an_outage():
    """Not leading, it did not read: announcements from before it looks again are old news."""
    trust = BoardTrust(forget_after_s=TTL_S)
    now_s = listened(trust)
    assert trust.distrust(roster(now_s, ("a", now_s, True))) is None
    back_s = now_s + 1.5
    assert trust.distrust(roster(back_s, ("a", back_s - 0.5, True))) is not None
    assert trust.distrust(roster(back_s + 0.1, ("a", back_s + 0.05, True))) is None


def test_a_known_worker_missing_from_the_roster_is_not_trusted_a_retired_one_is_forgotten():
    trust = BoardTrust(forget_after_s=TTL_S)
    now_s = listened(trust)
    trust.distrust(roster(now_s, ("a", now_s, True), ("b", now_s, True)))
    assert trust.distrust(roster(now_s + 0.1, ("a", now_s + 0.1, True))) == (
        "gateway worker b is missing from the roster"
    )
    retired = Roster(now_s + 0.2, [WorkerStatus("a", now_s + 0.2, True),
                                   WorkerStatus("b", now_s + 0.2, False, retired=True)])  # fmt: skip
    assert trust.distrust(retired) is None
    assert trust.distrust(roster(now_s + 0.3, ("a", now_s + 0.3, True))) is None


def test_after_an_outage_longer_than_the_ttl_a_known_worker_is_awaited_not_forgotten():
    """Redis away longer than the entry TTL: the workers' last words are old, but they
    are degraded, not dead, and rejoin within their retry interval. Until each announces
    again, or stays silent for a whole TTL after the outage, the board is not whole."""
    trust = BoardTrust(forget_after_s=TTL_S)
    now_s = listened(trust)
    assert trust.distrust(roster(now_s, ("a", now_s, True), ("b", now_s, True))) is None
    trust.unreadable()
    back_s = now_s + TTL_S + 2.0  # the store answers again, restarted empty
    assert trust.distrust(roster(back_s)) == "gateway worker a is missing from the roster"
    # a pushes its entries back and announces; b has not yet
    rejoined_s = keep_reading(trust, back_s, back_s + 1.5) + 0.1
    why = trust.distrust(roster(rejoined_s, ("a", rejoined_s, True)))
    assert why == "gateway worker b is missing from the roster"
    read_s = keep_reading(trust, rejoined_s, back_s + TTL_S, ("a", True))
    assert trust.distrust(roster(read_s, ("a", read_s, True))) == why
    gone_s = back_s + TTL_S + 0.05  # b never came back: dead, its entries gone with it
    assert trust.distrust(roster(gone_s, ("a", gone_s, True))) is None
