"""BalanceLedger: which failed creates spent a unit, from the balances seen and when."""

from __future__ import annotations

import logging

import pytest

from bot.jobs.balance_ledger import WATCHED_FOR, BalanceLedger, Verdict

UNSPENT, SPENT, ASSUMED = Verdict.UNSPENT, Verdict.SPENT, Verdict.ASSUMED_SPENT


def ledger_from(balance: int = 100) -> BalanceLedger:
    ledger = BalanceLedger()
    ledger.read(balance, 0.0, 0.1)
    return ledger


def test_of_two_creates_failed_together_the_one_whose_time_has_the_missing_unit_spent_it() -> None:
    """Counting alone sees one unit missing for two failed creates and must assume both
    spent; the reported balances place the missing unit in the time of only one."""
    ledger = ledger_from(100)
    ledger.created(99, 1.0, 1.2)
    ledger.failed(1, 1.5, 1.8)  # between the creates that reported 99 and 98: no gap
    ledger.created(98, 2.0, 2.2)
    ledger.failed(2, 3.0, 3.3)  # after 98, before the read of 96 with one more debit seen
    ledger.created(96, 3.5, 3.7)
    ledger.read(96, 5.0, 5.1)
    assert ledger.decide() == {1: UNSPENT, 2: SPENT}


def test_two_failures_in_one_gap_of_one_unit_cannot_be_told_apart() -> None:
    ledger = ledger_from(100)
    ledger.failed(1, 1.0, 1.5)
    ledger.failed(2, 1.2, 1.6)
    ledger.read(99, 3.0, 3.1)
    assert ledger.decide() == {1: ASSUMED, 2: ASSUMED}


def test_two_failures_in_one_gap_of_two_units_both_spent() -> None:
    ledger = ledger_from(100)
    ledger.failed(1, 1.0, 1.5)
    ledger.failed(2, 1.2, 1.6)
    ledger.read(98, 3.0, 3.1)
    assert ledger.decide() == {1: SPENT, 2: SPENT}


def test_a_gap_nobody_of_ours_explains_makes_its_failure_assumed_spent() -> None:
    """Another program on the key spent two units while one create of ours failed."""
    ledger = ledger_from(100)
    ledger.failed(1, 1.0, 1.5)
    ledger.read(98, 3.0, 3.1)
    assert ledger.decide() == {1: ASSUMED}


def test_a_slow_create_s_balance_is_placed_by_its_neighbours_not_by_when_it_was_sent() -> None:
    """A create answered 25 s after it was sent reports the balance of some moment in
    between; one reported higher, by a create sent later, shows that moment came after."""
    ledger = ledger_from(102)
    ledger.failed(1, 5.0, 5.2)  # while the slow create was out: spent nothing
    ledger.created(101, 20.0, 20.1)
    ledger.created(100, 1.0, 26.0)  # the slow one: its debit came after 20.0
    ledger.failed(2, 26.5, 26.7)  # spent
    ledger.created(98, 27.0, 27.1)
    assert ledger.decide() == {1: UNSPENT, 2: SPENT}


def test_a_create_reporting_the_balance_a_read_saw_before_it_shows_a_top_up() -> None:
    ledger = ledger_from(100)
    ledger.failed(1, 1.0, 1.2)
    ledger.created(100, 5.0, 5.1)  # 101 before its debit: more than read at 0.1
    ledger.read(100, 10.0, 10.1)
    assert ledger.decide() == {1: ASSUMED}


def test_a_top_up_hides_nothing_it_makes_every_failure_assumed_spent() -> None:
    ledger = ledger_from(100)
    ledger.failed(1, 1.0, 1.5)
    ledger.created(1099, 2.0, 2.1)  # topped up by 1000 meanwhile
    ledger.read(1099, 3.0, 3.1)
    assert ledger.decide() == {1: ASSUMED}


def test_a_create_that_did_not_report_the_balance_blinds_the_ledger_until_all_is_decided() -> None:
    ledger = ledger_from(100)
    ledger.failed(1, 1.0, 1.5)
    ledger.created(None, 2.0, 2.1)
    ledger.read(99, 3.0, 3.1)
    assert ledger.decide() == {1: ASSUMED}
    ledger.failed(2, 4.0, 4.5)  # decided against the last read alone now
    ledger.read(99, 5.0, 5.1)
    assert ledger.decide() == {2: UNSPENT}


def test_a_failure_the_server_may_still_process_waits_unless_its_debit_shows() -> None:
    ledger = ledger_from(100)
    ledger.failed(1, 1.0, 61.0)  # a timeout: the server may finish it until 61 s
    ledger.read(100, 3.0, 3.1)
    assert ledger.decide() == {}  # no debit yet; one may still come
    ledger.created(98, 10.0, 10.2)  # another create: one debit unreported before it
    ledger.read(98, 20.0, 20.1)
    assert ledger.decide() == {1: SPENT}  # its debit is seen: no need to wait


def test_a_failure_the_server_has_finished_without_a_debit_is_unspent_at_the_next_read() -> None:
    ledger = ledger_from(100)
    ledger.failed(1, 1.0, 61.0)
    ledger.read(100, 30.0, 30.1)
    assert ledger.decide() == {}
    ledger.created(99, 40.0, 40.2)
    ledger.read(99, 62.0, 62.1)
    assert ledger.decide() == {1: UNSPENT}


def test_without_a_balance_seen_before_it_a_failure_cannot_be_judged() -> None:
    ledger = BalanceLedger()
    ledger.failed(1, 1.0, 1.5)
    ledger.read(100, 3.0, 3.1)
    assert ledger.decide() == {1: ASSUMED}


def test_a_gap_confirms_a_failure_the_server_may_still_be_processing() -> None:
    """Two units missing, two candidates, one of them still settling: both are spent."""
    ledger = ledger_from(100)
    ledger.failed(1, 1.0, 1.5)
    ledger.failed(2, 1.2, 61.0)
    ledger.read(98, 3.0, 3.1)
    assert ledger.decide() == {1: SPENT, 2: SPENT}


def test_a_failure_assumed_spent_is_not_judged_again_and_the_others_still_are() -> None:
    ledger = ledger_from(100)
    ledger.failed(1, 1.0, 1.5)
    ledger.failed(2, 1.2, 61.0)
    assert ledger.assume_spent(1) == {1: ASSUMED}
    ledger.read(100, 70.0, 70.1)
    assert ledger.decide() == {2: UNSPENT}


def test_a_gap_a_create_in_flight_may_fill_decides_nothing_until_it_ends() -> None:
    """Two units missing and one failed create: the create still in flight may report
    one of them. Once it does, the other is the failed create's."""
    ledger = ledger_from(100)
    ledger.sending(5, 1.0)
    ledger.failed(1, 1.1, 1.3)
    ledger.read(98, 3.0, 3.1)
    assert ledger.decide() == {}
    ledger.created(99, 1.0, 3.5, job_id=5)
    assert ledger.decide() == {1: SPENT}


def test_a_create_in_flight_that_spent_nothing_leaves_the_gap_to_the_failure() -> None:
    ledger = ledger_from(100)
    ledger.sending(5, 1.0)
    ledger.failed(1, 1.1, 1.3)
    ledger.read(99, 3.0, 3.1)
    assert ledger.decide() == {}
    ledger.ended(5)  # a 429: nothing spent
    assert ledger.decide() == {1: SPENT}


def test_a_failure_no_gap_explains_spent_nothing_whatever_is_in_flight() -> None:
    """Its debit would be missing from the sightings for good: those in flight can only
    report debits of their own."""
    ledger = ledger_from(100)
    ledger.sending(5, 1.0)
    ledger.failed(1, 1.1, 1.3)
    ledger.created(99, 2.0, 2.2, job_id=6)  # sent after it: its own unit, no other gone
    assert ledger.decide() == {1: UNSPENT}


def test_a_read_is_wanted_if_no_balance_was_seen_since_it_failed_or_was_surely_done() -> None:
    ledger = ledger_from(100)
    ledger.failed(1, 1.0, 5.0, noticed=1.2)
    assert ledger.wants_read(1, now=1.3)  # its debit may show already
    ledger.created(99, 1.4, 1.6)  # a create sent since reported a balance
    assert not ledger.wants_read(1, now=1.7)
    assert ledger.wants_read(1, now=5.5)  # surely done: none seen since
    ledger.created(98, 5.2, 5.4)
    assert not ledger.wants_read(1, now=5.5)


def test_what_is_decided_is_forgotten_and_later_checks_start_from_the_last_read() -> None:
    ledger = ledger_from(100)
    for job_id in range(1, 200):
        at = job_id * 10.0
        ledger.failed(job_id, at, at + 0.5)
        ledger.read(100, at + 1.0, at + 1.1)
        assert ledger.decide() == {job_id: UNSPENT}
    assert len(ledger._sightings) == 1 and not ledger._failures  # bounded, not a history


def test_a_unit_only_one_failure_can_explain_is_its_and_then_tells_the_next_gap() -> None:
    """A dropped create (its time long) and a short failed one share a gap of one unit;
    but an earlier gap only the dropped one overlaps shows its unit there, so the shared
    one is the short one's."""
    ledger = ledger_from(100)
    ledger.failed(1, 1.0, 61.0)  # no reply: done 60 s later
    ledger.created(98, 2.0, 2.1)  # one unit missing since the read: only 1's
    ledger.failed(2, 10.0, 10.5)
    ledger.created(96, 11.0, 11.1)  # one more missing: 1's or 2's
    ledger.read(96, 70.0, 70.1)
    assert ledger.decide() == {1: SPENT, 2: SPENT}


def test_a_unit_two_failures_may_explain_stays_unknown_however_they_are_linked() -> None:
    ledger = ledger_from(100)
    ledger.failed(1, 1.0, 61.0)
    ledger.created(99, 2.0, 2.1)  # nothing missing yet
    ledger.failed(2, 10.0, 10.5)
    ledger.created(97, 11.0, 11.1)  # one missing: 1's or 2's
    ledger.read(97, 70.0, 70.1)
    assert ledger.decide() == {1: ASSUMED, 2: ASSUMED}


def test_a_failure_taken_as_spent_before_a_restart_explains_a_unit_after_it() -> None:
    """Two units missing: one is the failed create a previous run took as spent, so the
    other is the one a crash left undecided."""
    ledger = ledger_from(100)
    ledger.spent_earlier(6, 1.0, 61.0)
    ledger.failed(7, 2.0, 62.0)
    ledger.created(97, 3.0, 3.1)
    ledger.read(97, 70.0, 70.1)
    assert ledger.decide() == {7: SPENT}


def test_a_unit_a_rival_still_at_work_may_explain_waits_for_the_rival_to_show_its_own() -> None:
    """A create we gave up on (the server may debit it for a minute) and a short failed
    one share a gap of one unit: undecided while the long one may yet show its unit
    elsewhere. When it does, the shared unit is the short one's."""
    ledger = ledger_from(100)
    ledger.failed(1, 1.0, 61.0)  # given up on: done 60 s after it was sent
    ledger.failed(2, 10.0, 10.5)
    ledger.created(98, 11.0, 11.1)  # one missing: 1's or 2's
    assert ledger.decide() == {}  # 1 may still show its own unit: 2 waits
    ledger.created(96, 50.0, 50.1)  # one more missing, only 1 may explain it
    ledger.read(96, 70.0, 70.1)
    assert ledger.decide() == {1: SPENT, 2: SPENT}


def test_a_failure_given_up_on_is_logged_with_what_it_waited_for(
        caplog: pytest.LogCaptureFixture) -> None:
    ledger = ledger_from(100)
    ledger.failed(1, 1.0, 61.0)
    ledger.failed(2, 10.0, 10.5)
    ledger.created(98, 11.0, 11.1)
    ledger.sending(3, 12.0)
    with caplog.at_level(logging.INFO):
        assert ledger.assume_spent(2) == {2: ASSUMED}
        ledger.ended(3)
        assert ledger.assume_spent(1) == {1: ASSUMED}
    waited = [record.getMessage() for record in caplog.records]
    assert "1 of 1 other failed create(s) around it may still be processed" in waited[0]
    assert "no balance seen since the server was surely done with it" in waited[1]


def test_a_failure_taken_as_spent_for_want_of_time_is_shown_spent_when_its_rival_ends() -> None:
    ledger = ledger_from(100)
    ledger.failed(1, 1.0, 61.0)
    ledger.failed(2, 10.0, 10.5)
    ledger.created(98, 11.0, 11.1)  # one missing: 1's or 2's
    assert ledger.assume_spent(2) == {2: ASSUMED}  # its user is told it may have counted
    assert ledger.watching()
    ledger.created(96, 50.0, 50.1)  # one more missing, only 1 may explain it
    ledger.read(96, 70.0, 70.1)
    assert ledger.decide() == {1: SPENT}
    assert ledger.take_revised() == {2: SPENT} and ledger.take_revised() == {}
    assert not ledger.watching()


def test_a_failure_taken_as_spent_for_want_of_time_is_shown_unspent_when_a_create_reports(
        ) -> None:
    ledger = ledger_from(100)
    ledger.sending(3, 9.0)  # its debit may be the missing unit
    ledger.failed(2, 10.0, 10.5)
    ledger.created(98, 11.0, 11.1)
    assert ledger.assume_spent(2) == {2: ASSUMED}
    ledger.created(99, 9.0, 12.0, job_id=3)  # it was: nothing is missing
    assert ledger.decide() == {}
    assert ledger.take_revised() == {2: UNSPENT}


def test_a_failure_taken_as_spent_for_want_of_time_is_watched_only_for_a_while() -> None:
    ledger = ledger_from(100)
    ledger.failed(1, 1.0, 10 * WATCHED_FOR)  # still at work: it keeps the doubt open
    ledger.failed(2, 10.0, 10.5)
    ledger.created(98, 11.0, 11.1)
    ledger.assume_spent(2)
    ledger.read(98, 20.0, 20.1)
    ledger.decide()
    assert ledger.watching()
    ledger.read(98, 10.5 + WATCHED_FOR + 1, 10.5 + WATCHED_FOR + 2)
    ledger.decide()
    assert not ledger.watching() and ledger.take_revised() == {}


def test_a_unit_a_rival_done_without_a_unit_of_its_own_may_explain_stays_unknown() -> None:
    ledger = ledger_from(100)
    ledger.failed(1, 1.0, 61.0)
    ledger.failed(2, 10.0, 10.5)
    ledger.created(98, 11.0, 11.1)
    assert ledger.decide() == {}
    ledger.read(98, 70.0, 70.1)  # 1 is done, and showed no unit of its own
    assert ledger.decide() == {1: ASSUMED, 2: ASSUMED}


def test_a_round_of_verdicts_with_nothing_new_works_nothing_out_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every job awaiting a verdict asks for one at each news: with a chain of a hundred
    failures, working it all out each time held the event loop for seconds."""
    ledger = ledger_from(100)
    ledger.failed(1, 1.0, 5.0)
    ledger.sending(2, 2.0)  # in flight: a gap the failure may be in stays open
    rounds = 0
    gaps = ledger._gaps

    def counted() -> object:
        nonlocal rounds
        rounds += 1
        return gaps()

    monkeypatch.setattr(ledger, "_gaps", counted)
    assert ledger.decide() == {} and ledger.decide() == {}
    assert rounds == 1
    ledger.created(98, 2.0, 2.2, job_id=2)  # news: the unit missing is the failure's
    assert ledger.decide() == {1: SPENT}
    assert rounds == 2
