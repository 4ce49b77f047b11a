"""Barrier alignment across several senders: epochs, held-back input, aborts, restarts."""

from __future__ import annotations

from tideflow.runtime.recovery.barriers import INGRESS, BarrierAligner


def test_a_replica_with_two_senders_snapshots_once_both_barriers_came():
    a = BarrierAligner()
    a.set_senders({"prefill/0", "prefill/1"})
    assert a.epoch("prefill/0") == 0
    a.delivered("prefill/0", 1)
    assert a.epoch("prefill/0") == 1 and a.epoch("prefill/1") == 0  # later input of prefill/0 belongs to epoch 1
    assert a.met("prefill/0", 1) is None
    assert a.held("prefill/0") and not a.held("prefill/1")  # prefill/1's pre-barrier input still flows
    a.delivered("prefill/1", 1)
    assert a.met("prefill/1", 1) == 1  # aligned: snapshot now
    assert not a.held("prefill/0")
    a.snapshotted(1)
    assert a.met("prefill/0", 1) is None  # a late copy of an old barrier changes nothing


def test_an_aborted_checkpoint_releases_held_input_and_its_barriers_are_ignored():
    a = BarrierAligner()
    a.set_senders({"s/0", "s/1"})
    a.met("s/0", 3)
    assert a.held("s/0")
    a.abort(3)
    assert not a.held("s/0") and a.aligning is None
    assert a.met("s/1", 3) is None and not a.held("s/1")  # the other sender's barrier 3 came late
    assert a.met("s/0", 4) is None and a.met("s/1", 4) == 4  # the next checkpoint aligns normally


def test_a_newer_barrier_supersedes_one_never_completed_and_a_restart_marks_old_ones_stale():
    a = BarrierAligner()
    a.set_senders({"s/0", "s/1"})
    a.met("s/0", 2)
    a.met("s/1", 5)  # checkpoint 2 was given up upstream; 5 replaces it
    assert a.aligning == 5 and not a.held("s/0")
    assert a.met("s/0", 5) == 5

    b = BarrierAligner()
    b.restored(4, {"s/0": 6, "s/1": 4})
    assert b.epoch("s/0") == 6 and b.epoch("s/1") == 4 and b.epoch("s/2") == 4
    assert b.met("s/0", 6) is None  # seen before the crash: stale
    assert BarrierAligner().senders == {INGRESS}
