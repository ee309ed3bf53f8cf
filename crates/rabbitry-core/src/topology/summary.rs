//! The start-up line: what a declaration put on the broker, said once at
//! INFO, so that the log of a starting service shows its topology.
//!
//! A topology declared again (after a reconnect, or by a consumer that
//! subscribes again) is said at DEBUG only. A long one (a delay cascade has
//! dozens of parts) is counted on the INFO line, with its first names, and
//! listed item by item at DEBUG.

use std::fmt;

use super::queue::DeliveryLimit;
use super::spec::{Binding, Exchange};
use super::{DeadLetter, Queue, QueueType, Topology};

/// Up to this many items in all, the INFO line lists every one.
const INLINE_ITEMS: usize = 12;
/// Past that, the INFO line names this many of each kind.
const NAMED_WHEN_LONG: usize = 3;

/// Logs what declaring `topology` put on the broker: at INFO when it is
/// new to this broker handle (`first`), at DEBUG when declared again.
pub(super) fn log_declared(topology: &Topology, first: bool) {
    let exchanges: Vec<String> = topology.exchanges.iter().map(exchange).collect();
    let queues: Vec<String> = topology.queues.iter().map(queue).collect();
    let bindings: Vec<String> = topology.bindings.iter().map(binding).collect();
    if !first {
        tracing::debug!(
            exchanges = exchanges.len(),
            queues = queues.len(),
            bindings = bindings.len(),
            "topology declared again"
        );
        return;
    }
    let total = exchanges.len() + queues.len() + bindings.len();
    if total <= INLINE_ITEMS {
        tracing::info!(
            exchanges = %List(&exchanges, usize::MAX),
            queues = %List(&queues, usize::MAX),
            bindings = %List(&bindings, usize::MAX),
            "topology declared"
        );
        return;
    }
    tracing::info!(
        exchanges = %List(&exchanges, NAMED_WHEN_LONG),
        queues = %List(&queues, NAMED_WHEN_LONG),
        bindings = %List(&bindings, NAMED_WHEN_LONG),
        every_part = "at DEBUG (rabbitry_core::topology=debug)",
        "topology declared"
    );
    for item in &exchanges {
        tracing::debug!(exchange = %item, "declared");
    }
    for item in &queues {
        tracing::debug!(queue = %item, "declared");
    }
    for item in &bindings {
        tracing::debug!(binding = %item, "declared");
    }
}

/// `orders (topic)`.
fn exchange(e: &Exchange) -> String {
    format!("{} ({})", e.name, e.kind.as_str())
}

/// `orders.created (quorum, dead-letters to orders.created.dlx)`: the type
/// and what decides where a message goes next.
fn queue(q: &Queue) -> String {
    let mut parts = vec![
        match q.queue_type {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
            QueueType::Stream => "stream",
        }
        .to_owned(),
    ];
    if let Some(ttl) = q.message_ttl {
        parts.push(format!("ttl {ttl:?}"));
    }
    match &q.dead_letter {
        DeadLetter::Convention => parts.push(format!(
            "dead-letters to {}",
            Queue::dead_letter_exchange_name(&q.name)
        )),
        // The default exchange routes by queue name: a retry or delay
        // queue going back to its work queue.
        DeadLetter::To {
            exchange,
            routing_key: Some(key),
        } if exchange.is_empty() => parts.push(format!("dead-letters to queue {key}")),
        DeadLetter::To {
            exchange,
            routing_key,
        } => parts.push(match routing_key {
            Some(key) => format!("dead-letters to {exchange} with key {key}"),
            None => format!("dead-letters to {exchange}"),
        }),
        DeadLetter::Off => {}
    }
    if let DeliveryLimit::Limit(n) = q.delivery_limit {
        parts.push(format!("delivery limit {n}"));
    }
    if let Some(n) = q.max_length {
        parts.push(format!("max length {n}"));
    }
    if q.single_active_consumer {
        parts.push("single active consumer".to_owned());
    }
    format!("{} ({})", q.name, parts.join(", "))
}

/// `orders -> orders.created [order.created]`.
fn binding(b: &Binding) -> String {
    format!("{} -> {} [{}]", b.exchange, b.queue, b.routing_key)
}

/// A list for a log field: every item up to a limit, then how many more;
/// `none` when empty.
struct List<'a>(&'a [String], usize);

impl fmt::Display for List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let List(items, limit) = *self;
        if items.is_empty() {
            return f.write_str("none");
        }
        for (i, item) in items.iter().take(limit).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(item)?;
        }
        if items.len() > limit {
            write!(f, " and {} more", items.len() - limit)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_queue_says_its_type_and_where_its_messages_go_next() {
        let t = Topology::new().queue(Queue::new("work").delivery_limit(5));
        let queues: Vec<String> = t.queues.iter().map(queue).collect();
        assert_eq!(
            queues,
            [
                "work (quorum, dead-letters to work.dlx, delivery limit 5)",
                "work.dlq (quorum)"
            ]
        );
        assert_eq!(exchange(&t.exchanges[0]), "work.dlx (fanout)");
        assert_eq!(binding(&t.bindings[0]), "work.dlx -> work.dlq []");
        let retry = Queue::classic("work.retry.10s")
            .message_ttl(Duration::from_secs(10))
            .dead_letter(DeadLetter::To {
                exchange: String::new(),
                routing_key: Some("work".into()),
            });
        assert_eq!(
            queue(&retry),
            "work.retry.10s (classic, ttl 10s, dead-letters to queue work)"
        );
    }

    #[test]
    fn a_long_list_is_cut_with_a_count() {
        let items: Vec<String> = (0..5).map(|i| format!("q{i}")).collect();
        assert_eq!(List(&items, 2).to_string(), "q0, q1 and 3 more");
        assert_eq!(List(&items, usize::MAX).to_string(), "q0, q1, q2, q3, q4");
        assert_eq!(List(&[], 2).to_string(), "none");
    }
}
