//! Unit tests of the exchange, queue and binding specs.

use super::queue::*;
use super::spec::*;
use crate::connection::ServerVersion;

#[test]
fn default_queue_is_quorum_with_at_least_once_dead_lettering() {
    let args = Queue::new("orders").arguments();
    assert_eq!(args["x-queue-type"], ArgValue::from("quorum"));
    assert_eq!(args["x-dead-letter-exchange"], ArgValue::from("orders.dlx"));
    assert_eq!(
        args["x-dead-letter-strategy"],
        ArgValue::from("at-least-once")
    );
    assert_eq!(args["x-overflow"], ArgValue::from("reject-publish"));
}

#[test]
fn classic_lazy_queue_has_no_quorum_arguments() {
    let q = Queue::classic("backlog")
        .lazy(true)
        .max_length(10)
        .overflow(Overflow::DropHead);
    q.validate().expect("valid");
    let args = q.arguments();
    assert_eq!(args["x-queue-mode"], ArgValue::from("lazy"));
    assert!(!args.contains_key("x-delivery-limit"));
    assert_eq!(args["x-max-length"], ArgValue::Int(10));
    assert!(!args.contains_key("x-queue-type"));
    assert!(!args.contains_key("x-dead-letter-strategy"));
}

fn v(text: &str) -> Option<ServerVersion> {
    ServerVersion::parse(text)
}

#[test]
fn quorum_queues_that_dead_letter_get_the_default_delivery_limit() {
    for version in [None, v("3.10.8"), v("4.0.5")] {
        let (args, soft) = Queue::new("work").arguments_for(version);
        assert_eq!(
            args["x-delivery-limit"],
            ArgValue::Int(DEFAULT_DELIVERY_LIMIT)
        );
        assert_eq!(
            soft[0].key, "x-delivery-limit",
            "an older queue may lack it"
        );
        assert_eq!(soft[0].otherwise, None);
    }
    let explicit = Queue::new("work")
        .delivery_limit(5)
        .arguments_for(v("4.0.5"));
    assert_eq!(explicit.0["x-delivery-limit"], ArgValue::Int(5));
    assert!(
        explicit.1.is_empty(),
        "the user's own limit is never dropped"
    );
    for q in [
        Queue::new("removed").broker_default_delivery_limit(),
        Queue::classic("classic"),
        Queue::new("stream").queue_type(QueueType::Stream),
    ] {
        let (args, soft) = q.arguments_for(v("4.0.5"));
        assert!(!args.contains_key("x-delivery-limit"), "{}", q.name);
        assert!(soft.is_empty(), "{}", q.name);
    }
    let by_hand = Queue::new("raw").argument("x-delivery-limit", 7i64);
    assert_eq!(by_hand.arguments()["x-delivery-limit"], ArgValue::Int(7));
}

#[test]
fn unlimited_deliveries_is_minus_one_from_rabbitmq_4_and_absent_before() {
    // Asked for, or the default of a quorum queue with nowhere to
    // dead-letter to: 4.0's limit of 20 would drop its messages.
    for q in [
        Queue::new("errors")
            .dead_letter(DeadLetter::Off)
            .unlimited_deliveries(),
        Queue::new("off").dead_letter(DeadLetter::Off),
    ] {
        q.validate().expect("valid");
        for version in [v("4.0.5"), v("4.3.0")] {
            let (args, soft) = q.arguments_for(version);
            assert_eq!(args["x-delivery-limit"], ArgValue::Int(-1), "{}", q.name);
            assert_eq!(soft[0].key, "x-delivery-limit");
        }
        // 3.10 reads -1 as "drop at the first return"; no argument is unlimited.
        for version in [None, v("3.10.8"), v("3.13.7")] {
            let (args, soft) = q.arguments_for(version);
            assert!(!args.contains_key("x-delivery-limit"), "{version:?}");
            assert!(soft.is_empty());
        }
    }
}

#[test]
fn lazy_mode_is_left_out_from_rabbitmq_3_12() {
    let q = Queue::classic("backlog").lazy(true);
    for version in [None, v("3.10.8"), v("3.11.28")] {
        let (args, soft) = q.arguments_for(version);
        assert_eq!(args["x-queue-mode"], ArgValue::from("lazy"), "{version:?}");
        assert!(soft.is_empty());
        assert!(!q.lazy_is_a_no_op(version));
    }
    for version in [v("3.12.0"), v("4.0.5"), v("4.3.0")] {
        let (args, soft) = q.arguments_for(version);
        assert!(!args.contains_key("x-queue-mode"), "{version:?}");
        assert!(q.lazy_is_a_no_op(version));
        // A queue declared lazy before the upgrade still holds the argument.
        assert_eq!(soft[0].key, "x-queue-mode");
        assert_eq!(soft[0].otherwise, Some(ArgValue::from("lazy")));
    }
}

#[test]
fn contradictory_settings_are_rejected_with_the_queue_name() {
    let err = Queue::new("q1")
        .lazy(true)
        .validate()
        .expect_err("lazy quorum");
    assert!(err.contains("q1") && err.contains("classic"));
    let err = Queue::new("q2")
        .overflow(Overflow::DropHead)
        .validate()
        .expect_err("drop-head");
    assert!(err.contains("reject-publish"));
    let err = Queue::classic("q3")
        .delivery_limit(3)
        .validate()
        .expect_err("classic limit");
    assert!(err.contains("quorum"));
    Queue::new("q4")
        .overflow(Overflow::DropHead)
        .at_least_once_dead_letter(false)
        .validate()
        .expect("explicit opt-out is fine");
}
