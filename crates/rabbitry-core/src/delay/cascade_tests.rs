//! The cascade's routing, simulated: a topic matcher as RabbitMQ's (`*` one
//! word, `#` zero or more), and the exchanges and bindings the cascade
//! declares.

use super::*;

/// RabbitMQ's topic match.
fn matches(binding: &str, key: &str) -> bool {
    fn go(b: &[&str], k: &[&str]) -> bool {
        match (b.first(), k.first()) {
            (None, None) => true,
            (Some(&"#"), _) => go(&b[1..], k) || (!k.is_empty() && go(b, &k[1..])),
            (Some(&"*"), Some(_)) => go(&b[1..], &k[1..]),
            (Some(w), Some(x)) if w == x => go(&b[1..], &k[1..]),
            _ => false,
        }
    }
    let b: Vec<&str> = binding.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    go(&b, &k)
}

/// Where a key goes from exchange `level`: `Ok(queue level)` or `Err(())`
/// for the delivery exchange. Exactly one binding must match.
fn route(mut level: u32, key: &str) -> Result<u32, ()> {
    loop {
        let to_queue = matches(&queue_binding(level), key);
        let fall = matches(&fall_through_binding(level), key);
        assert!(
            to_queue != fall,
            "exactly one of the two bindings of level {level} matches {key}"
        );
        if to_queue {
            return Ok(level);
        }
        if level == 0 {
            return Err(());
        }
        level -= 1;
    }
}

/// The levels a delay of `seconds` waits in, in order.
fn journey(seconds: u64) -> Vec<u32> {
    let key = routing_key(seconds, "orders.timeouts");
    let mut waits = Vec::new();
    let mut at = Some(first_level(seconds));
    while let Some(level) = at {
        match route(level, &key) {
            Ok(queue) => {
                waits.push(queue);
                // Expired: dead-lettered to the next exchange down.
                at = queue.checked_sub(1);
            }
            Err(()) => at = None,
        }
    }
    assert!(
        matches(&delivery_binding("orders.timeouts"), &key),
        "the destination's binding takes the key"
    );
    waits
}

#[test]
fn the_key_is_28_binary_digits_highest_first_then_the_destination() {
    let key = routing_key(5, "q");
    assert_eq!(key, format!("{}1.0.1.q", "0.".repeat(25)));
    assert_eq!(key.len(), PREFIX_LEN + 1);
    assert_eq!(
        routing_key((1 << 28) - 1, "q"),
        format!("{}q", "1.".repeat(28))
    );
}

#[test]
fn a_message_waits_two_to_the_l_seconds_at_each_level_whose_digit_is_one() {
    for seconds in [1, 2, 3, 5, 8, 13, 255, 256, 1_000, 86_400, (1 << 28) - 1] {
        let levels = journey(seconds);
        let waited: u64 = levels.iter().map(|l| 1u64 << l).sum();
        assert_eq!(waited, seconds, "{seconds} s waits {levels:?}");
        assert_eq!(levels.first(), Some(&first_level(seconds)));
        assert!(levels.windows(2).all(|w| w[0] > w[1]), "downwards only");
    }
}

#[test]
fn the_first_level_is_the_highest_one_digit() {
    assert_eq!(first_level(1), 0);
    assert_eq!(first_level(2), 1);
    assert_eq!(first_level(3), 1);
    assert_eq!(first_level(1 << 27), 27);
    assert_eq!(first_level((1 << 28) - 1), 27);
}

#[test]
fn delays_round_up_to_whole_seconds_so_never_early() {
    assert_eq!(whole_seconds(Duration::from_millis(2_400)), 3);
    assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
    assert_eq!(whole_seconds(Duration::from_nanos(1)), 1);
    assert_eq!(whole_seconds(Duration::ZERO), 0);
    assert_eq!(max_delay(28), Duration::from_secs((1 << 28) - 1));
    assert_eq!(max_delay(4), Duration::from_secs(15));
}

#[test]
fn a_destination_gets_exactly_its_own_messages() {
    let key = routing_key(3, "orders.timeouts");
    assert!(matches(&delivery_binding("orders.timeouts"), &key));
    assert!(!matches(&delivery_binding("timeouts"), &key));
    assert!(!matches(&delivery_binding("orders"), &key));
    assert!(!matches(&delivery_binding("orders.timeouts.x"), &key));
}

#[test]
fn destinations_that_cannot_be_routed_are_refused_with_a_reason() {
    assert!(check_destination("orders").is_ok());
    let longest = "q".repeat(255 - PREFIX_LEN);
    assert!(check_destination(&longest).is_ok());
    assert_eq!(routing_key(1, &longest).len(), 255);
    let too_long = check_destination(&"q".repeat(256 - PREFIX_LEN)).expect_err("too long");
    assert!(too_long.contains("at most 199"), "{too_long}");
    assert!(
        check_destination("")
            .expect_err("empty")
            .contains("default exchange")
    );
    assert!(check_destination("a.#").is_err());
    assert!(check_destination("a.*.b").is_err());
}

#[test]
fn names_come_from_the_prefix() {
    let n = Names::new("app.delay");
    assert_eq!(n.level(3), "app.delay.level-03");
    assert_eq!(n.delivery(), "app.delay.delivery");
    assert_eq!(n.unroutable(), "app.delay.unroutable");
    assert_eq!(n.plugin(), "app.delay.plugin");
}
