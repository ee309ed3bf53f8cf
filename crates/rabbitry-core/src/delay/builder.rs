//! Building [`Delays`]: settings, their defaults, and getting the broker
//! ready (the cascade declared, or the plugin found).

use std::sync::Arc;
use std::time::Duration;

use super::cascade::{self, MAX_CASCADE_LEVELS, Names};
use super::plugin::{self, Plugin};
use super::routes::Routes;
use super::{DelayStrategy, Delays, Inner, topology};
use crate::error::{Error, Result};
use crate::publisher::Publisher;

/// The default name prefix of the cascade's exchanges and queues.
const DEFAULT_PREFIX: &str = "rabbitry.delay";

/// Builder for [`Delays`].
#[must_use]
#[derive(Debug)]
pub struct DelaysBuilder {
    publisher: Publisher,
    prefix: String,
    levels: u32,
    fixed: Vec<Duration>,
    plugin: bool,
}

impl DelaysBuilder {
    pub(super) fn new(publisher: Publisher) -> Self {
        Self {
            publisher,
            prefix: DEFAULT_PREFIX.to_owned(),
            levels: MAX_CASCADE_LEVELS,
            fixed: Vec::new(),
            plugin: false,
        }
    }

    /// The name prefix of the cascade's exchanges and queues
    /// (`<prefix>.level-NN`, `<prefix>.delivery`, `<prefix>.unroutable`,
    /// and `<prefix>.plugin` for the plugin). Default: `rabbitry.delay`.
    /// Services that share a prefix share one cascade.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Levels of the cascade, from 1 to 28: the longest delay is
    /// 2^levels − 1 seconds. Default: 28 (about 8.5 years).
    pub fn levels(mut self, levels: u32) -> Self {
        self.levels = levels;
        self
    }

    /// Adds a fixed delay: a delay equal to it goes through a queue of its
    /// own per destination (`<queue>.delay.<ms>ms`), exact to the
    /// millisecond. A delay finer than that is rounded up to the next whole
    /// millisecond (1.5 ms is a 2 ms queue), here and at publish time, so
    /// it is never early. Default: none.
    pub fn fixed(mut self, delay: Duration) -> Self {
        self.fixed.push(super::due::whole_millis_up(delay));
        self
    }

    /// Uses the `x-delayed-message` plugin when the broker has it (and is
    /// older than RabbitMQ 4.3), the cascade otherwise. Default: false, the
    /// cascade: the plugin keeps delayed messages on one node, unreplicated,
    /// and is no longer maintained.
    pub fn plugin(mut self, yes: bool) -> Self {
        self.plugin = yes;
        self
    }

    /// Checks the settings, then finds the plugin (if asked for) or
    /// declares the cascade (idempotent), and logs which is used.
    pub async fn build(self) -> Result<Delays> {
        if !(1..=MAX_CASCADE_LEVELS).contains(&self.levels) {
            return Err(Error::Config(format!(
                "a delay cascade has from 1 to {MAX_CASCADE_LEVELS} levels, not {}",
                self.levels
            )));
        }
        if let Some(bad) = self
            .fixed
            .iter()
            .find(|d| d.is_zero() || d.as_millis() > u128::from(u32::MAX))
        {
            return Err(Error::Config(format!(
                "a fixed delay must be more than zero and at most 2^32-1 ms, not {bad:?}"
            )));
        }
        let names = Names::new(&self.prefix);
        // The longest derived name must be a valid AMQP name.
        crate::wire::check_name("the delay prefix", &names.unroutable()).map_err(Error::Config)?;
        let broker = self.publisher.broker().clone();
        let strategy = match self.plugin {
            false => DelayStrategy::Cascade,
            true => match plugin::detect(&broker, &names.plugin()).await? {
                Plugin::Present => DelayStrategy::Plugin,
                Plugin::Missing(why) => {
                    tracing::warn!(reason = %why, "the delayed-message plugin is not available; using the delay cascade");
                    DelayStrategy::Cascade
                }
            },
        };
        if strategy == DelayStrategy::Cascade {
            topology::declare(&broker, &names, self.levels).await?;
        }
        tracing::info!(
            ?strategy,
            prefix = self.prefix,
            max_delay = ?match strategy {
                DelayStrategy::Cascade => cascade::max_delay(self.levels),
                DelayStrategy::Plugin => super::PLUGIN_MAX_DELAY,
            },
            fixed = ?self.fixed,
            "delayed messages ready"
        );
        Ok(Delays {
            inner: Arc::new(Inner {
                publisher: self.publisher,
                names,
                levels: self.levels,
                fixed: self.fixed,
                strategy,
                routes: Routes::default(),
            }),
        })
    }
}
