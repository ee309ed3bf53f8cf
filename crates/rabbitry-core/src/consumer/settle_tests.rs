//! Unit tests of the ack window.

use super::*;

fn now() -> Instant {
    Instant::now()
}

#[test]
fn acks_coalesce_only_over_a_complete_prefix() {
    let mut w = AckWindow::default();
    for t in 1..=5 {
        w.delivered(t);
    }
    assert_eq!(w.ack(2, now()), None, "1 is still running");
    assert_eq!(w.ack(3, now()), None);
    assert_eq!(w.ack(1, now()), Some((3, 3)), "1..=3 in one multiple ack");
    assert_eq!(w.ack(5, now()), None, "4 is still running");
    assert_eq!(w.remove(4), Some((5, 1)), "4 nacked alone frees 5");
    assert!(w.is_empty());
}

#[test]
fn a_nack_in_the_middle_is_never_covered_by_a_multiple_ack() {
    let mut w = AckWindow::default();
    for t in 1..=3 {
        w.delivered(t);
    }
    assert_eq!(w.remove(2), None, "1 still running");
    assert_eq!(w.ack(3, now()), None);
    // 2 is gone from the window, so the multiple ack for 3 covers 1 and
    // 3 only; the broker already has 2's nack, sent first.
    assert_eq!(w.ack(1, now()), Some((3, 2)));
}

#[test]
fn a_full_window_acked_in_reverse_flushes_once_and_empties() {
    let mut w = AckWindow::default();
    for t in 1..=1000 {
        w.delivered(t);
    }
    for t in (2..=1000).rev() {
        assert_eq!(w.ack(t, now()), None, "tag 1 still running ({t})");
    }
    assert_eq!(w.ack(1, now()), Some((1000, 1000)));
    assert!(w.is_empty());
    w.delivered(1001);
    assert_eq!(w.ack(1001, now()), Some((1001, 1)), "the window goes on");
}

#[test]
fn acks_held_behind_a_slow_head_go_out_alone_at_half_the_window() {
    let mut w = AckWindow::default();
    for t in 1..=10 {
        w.delivered(t);
    }
    for t in 2..=5 {
        assert_eq!(w.ack(t, now()), None);
    }
    assert!(
        w.take_held(now()).is_empty(),
        "4 held of 10: keep coalescing"
    );
    assert_eq!(w.ack(6, now()), None);
    assert_eq!(w.take_held(now()), vec![2, 3, 4, 5, 6], "5 held of 10");
    assert!(w.held_deadline().is_none());
    // The head finishes later: its ack covers itself only.
    assert_eq!(w.ack(1, now()), Some((1, 1)));
    assert_eq!(w.ack(7, now()), Some((7, 1)));
}

#[test]
fn acks_held_past_the_limit_go_out_alone_even_in_a_big_window() {
    let mut w = AckWindow::default();
    for t in 1..=100 {
        w.delivered(t);
    }
    let start = now();
    assert_eq!(w.ack(7, start), None);
    assert_eq!(w.held_deadline(), Some(start + HELD_ACK_LIMIT));
    assert!(w.take_held(start).is_empty(), "1 held of 100, not overdue");
    assert_eq!(w.take_held(start + HELD_ACK_LIMIT), vec![7]);
    assert!(w.held_deadline().is_none());
    assert_eq!(w.ack(1, now()), Some((1, 1)));
}

#[test]
fn a_prefix_flush_ends_the_held_run_and_its_clock() {
    let mut w = AckWindow::default();
    for t in 1..=4 {
        w.delivered(t);
    }
    assert_eq!(w.ack(2, now()), None);
    assert!(w.held_deadline().is_some());
    assert_eq!(w.ack(1, now()), Some((2, 2)));
    assert!(w.held_deadline().is_none(), "nothing held any more");
    assert_eq!(w.remove(3), None);
    assert_eq!(w.ack(4, now()), Some((4, 1)));
    assert!(w.is_empty());
}
