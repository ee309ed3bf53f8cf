//! The partitions: N queues named after a base name, each with a single
//! active consumer, and, for the exchange routes, the hashing exchange.

use super::jump::partition_of;
use super::route::Route;
use crate::error::{Error, Result};
use crate::message::PARTITION_KEY_HEADER;
use crate::topology::{Binding, Exchange, ExchangeKind, Queue, Topology};
use crate::wire::check_name;

/// The most partitions one set may have.
pub const MAX_PARTITIONS: u32 = 1024;

/// N partition queues `<base>.0` … `<base>.<N-1>`, each declared with
/// `x-single-active-consumer`, and the [`Route`] messages take to them.
///
/// ```
/// use rabbitry_core::{Partitions, Route};
///
/// let p = Partitions::new("user-events", 4);
/// assert_eq!(p.queue_names(), ["user-events.0", "user-events.1", "user-events.2", "user-events.3"]);
/// assert!(p.index_of("user-42") < 4);
/// assert!(Partitions::new("x", 0).validate().is_err());
/// let hashed = Partitions::new("user-events", 4).route(Route::ConsistentHash);
/// assert_eq!(hashed.exchange_name(), "user-events.hash");
/// ```
#[derive(Clone, Debug, PartialEq)]
#[must_use]
pub struct Partitions {
    base: String,
    count: u32,
    route: Route,
    template: Queue,
}

impl Partitions {
    /// `count` partitions named after `base`, reached by [`Route::Jump`].
    pub fn new(base: impl Into<String>, count: u32) -> Self {
        let base = base.into();
        Self {
            template: Queue::new(base.clone()),
            base,
            count,
            route: Route::default(),
        }
    }
    /// The route. Default: [`Route::Jump`].
    pub fn route(mut self, route: Route) -> Self {
        self.route = route;
        self
    }
    /// The settings of every partition queue (type, delivery limit, length
    /// limits, …); its name is ignored and single active consumer is always
    /// on. Default: [`Queue::new`]'s (a quorum queue with a dead-letter
    /// exchange).
    pub fn queue(mut self, template: Queue) -> Self {
        self.template = template;
        self
    }
    /// The partition count.
    pub fn count(&self) -> u32 {
        self.count
    }
    /// The base name.
    pub fn base(&self) -> &str {
        &self.base
    }
    /// The route.
    pub fn route_kind(&self) -> Route {
        self.route
    }
    /// Queue of partition `index`: `<base>.<index>`.
    pub fn queue_name(&self, index: u32) -> String {
        format!("{}.{index}", self.base)
    }
    /// Every partition queue, in index order.
    pub fn queue_names(&self) -> Vec<String> {
        (0..self.count).map(|i| self.queue_name(i)).collect()
    }
    /// The hashing exchange of the exchange routes: `<base>.hash`.
    pub fn exchange_name(&self) -> String {
        format!("{}.hash", self.base)
    }
    /// The partition of `key` by jump consistent hash. Only
    /// [`Route::Jump`] sends messages by it; the exchanges hash their own
    /// way.
    pub fn index_of(&self, key: &str) -> u32 {
        partition_of(key, self.count)
    }

    /// Checks the count and the names.
    pub fn validate(&self) -> Result<()> {
        if self.count == 0 || self.count > MAX_PARTITIONS {
            return Err(Error::Config(format!(
                "a partition count of {} (it must be 1 to {MAX_PARTITIONS})",
                self.count
            )));
        }
        if self.base.is_empty() {
            return Err(Error::Config("partitions need a base name".into()));
        }
        check_name(
            "partition queue name",
            &self.queue_name(self.count.saturating_sub(1)),
        )
        .and_then(|()| check_name("partition exchange name", &self.exchange_name()))
        .map_err(Error::Config)?;
        self.topology_unchecked().validate()
    }

    /// The queues (and, for an exchange route, the exchange and its
    /// bindings), to declare at start by publishers and consumers alike.
    pub fn topology(&self) -> Result<Topology> {
        self.validate()?;
        Ok(self.topology_unchecked())
    }

    fn topology_unchecked(&self) -> Topology {
        let mut topology = Topology::new();
        for name in self.queue_names() {
            let mut queue = self.template.clone();
            queue.name = name;
            topology = topology.queue(queue.single_active_consumer(true));
        }
        let Some(kind) = self.route.exchange_type() else {
            return topology;
        };
        let mut exchange = Exchange::new(self.exchange_name(), ExchangeKind::Custom(kind.into()));
        if self.route == Route::ConsistentHash {
            exchange = exchange.argument("hash-header", PARTITION_KEY_HEADER);
        }
        topology = topology.exchange(exchange);
        for name in self.queue_names() {
            // The consistent-hash exchange reads the binding key as the
            // queue's weight; the modulus-hash exchange ignores it.
            topology = topology.binding(Binding::new(self.exchange_name(), name, "1"));
        }
        topology
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_counts_and_names_are_refused_with_a_clear_error() {
        for n in [0, MAX_PARTITIONS + 1] {
            let e = Partitions::new("p", n).validate().expect_err("refused");
            assert!(e.to_string().contains("partition count"), "{e}");
        }
        assert!(Partitions::new("", 2).validate().is_err());
        let long = "x".repeat(260);
        let e = Partitions::new(long, 16).validate().expect_err("refused");
        assert!(e.to_string().contains("partition queue name"), "{e}");
    }

    #[test]
    fn every_partition_queue_has_a_single_active_consumer() {
        let t = Partitions::new("p", 3).topology().expect("valid");
        let sac: Vec<_> = t
            .queues()
            .filter(|q| q.single_active_consumer)
            .map(|q| q.name())
            .collect();
        assert_eq!(sac, ["p.0", "p.1", "p.2"]);
        let hash = |t: &Topology| t.exchanges().filter(|e| e.name == "p.hash").count();
        assert_eq!(hash(&t), 0, "the jump route needs no exchange");
        let t = Partitions::new("p", 3)
            .route(Route::ConsistentHash)
            .topology()
            .expect("valid");
        assert_eq!(hash(&t), 1);
    }
}
