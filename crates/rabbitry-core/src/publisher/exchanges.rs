//! Which exchanges exist: checked once per exchange, shared by every
//! publish in flight.
//!
//! Publishing to a missing exchange makes the broker close the channel,
//! failing every other message in flight on it. A passive declare on a
//! channel of its own first keeps one bad destination from hurting the rest.
//! The check is single-flight: a burst of publishes to an exchange not yet
//! checked (a relay batch of 500 rows) opens one channel, not 500.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bounded::{close_channel, within};
use crate::connection::{Broker, Role};
use crate::error::{Error, Result};

/// How long an exchange is trusted to exist without checking again.
const FOUND_TTL: Duration = Duration::from_secs(30);
/// Exchanges remembered at most.
const MAX_REMEMBERED: usize = 10_000;
/// How long a missing exchange is reported missing without asking again.
const MISSING_TTL: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(crate) struct ExchangeChecks {
    by_name: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Checked>>>>>,
}

#[derive(Clone)]
struct Checked {
    at: Instant,
    missing: Option<String>,
}

impl ExchangeChecks {
    /// Whether `exchange` is known to exist right now, without waiting:
    /// false when it must be checked (or is being checked, or is missing),
    /// which [`ensure`](Self::ensure) does.
    pub(crate) fn known(&self, exchange: &str) -> bool {
        if always_there(exchange) {
            return true;
        }
        let slot = {
            let by_name = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
            match by_name.get(exchange) {
                Some(slot) => slot.clone(),
                None => return false,
            }
        };
        slot.try_lock().is_ok_and(|checked| {
            checked
                .as_ref()
                .is_some_and(|c| c.missing.is_none() && c.at.elapsed() < FOUND_TTL)
        })
    }

    /// Ok when `exchange` exists (or is one the broker always has).
    pub(crate) async fn ensure(&self, broker: &Broker, exchange: &str) -> Result<()> {
        if always_there(exchange) {
            return Ok(());
        }
        let slot = {
            let mut by_name = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
            if by_name.len() >= MAX_REMEMBERED {
                // Names come from callers and outbox rows: keep the map
                // bounded, forgetting the checks nobody is waiting on.
                by_name.retain(|_, slot| Arc::strong_count(slot) > 1);
            }
            by_name.entry(exchange.to_owned()).or_default().clone()
        };
        // Publishes to the same exchange queue here while one of them checks.
        let mut checked = slot.lock().await;
        if let Some(c) = checked.as_ref() {
            let ttl = if c.missing.is_some() {
                MISSING_TTL
            } else {
                FOUND_TTL
            };
            if c.at.elapsed() < ttl {
                return match &c.missing {
                    None => Ok(()),
                    Some(text) => Err(missing(exchange, text.clone())),
                };
            }
        }
        // Boxed: the cold path (once per exchange every 30 s), kept out of
        // every publish's future.
        let result = Box::pin(check(broker, exchange)).await;
        *checked = match &result {
            Ok(()) => Some(Checked {
                at: Instant::now(),
                missing: None,
            }),
            Err(Error::Broker {
                code: 404, text, ..
            }) => Some(Checked {
                at: Instant::now(),
                missing: Some(text.clone()),
            }),
            // Anything else says nothing about the exchange.
            Err(_) => None,
        };
        result
    }

    /// Forgets what is known of `exchange` (the broker said 404 on publish).
    pub(crate) fn forget(&self, exchange: &str) {
        self.by_name
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(exchange);
    }
}

/// The default exchange and the `amq.` ones, which every broker has.
fn always_there(exchange: &str) -> bool {
    exchange.is_empty() || exchange.starts_with("amq.")
}

async fn check(broker: &Broker, exchange: &str) -> Result<()> {
    let timeout = broker.operation_timeout();
    let channel = broker.open_channel(Role::Publish).await?;
    let options = lapin::options::ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let name = crate::wire::short("the exchange name", exchange)?;
    let declared = within(
        timeout,
        "exchange.declare (passive)",
        channel.exchange_declare(
            name,
            lapin::ExchangeKind::Direct,
            options,
            lapin::types::FieldTable::default(),
        ),
    )
    .await?;
    match declared {
        Ok(()) => {
            close_channel(&channel, timeout, "checked").await;
            Ok(())
        }
        Err(e) => Err(match Error::from_lapin("exchange.declare (passive)", &e) {
            Error::Broker {
                code: 404, text, ..
            } => missing(exchange, text),
            other => other,
        }),
    }
}

fn missing(exchange: &str, text: String) -> Error {
    Error::Broker {
        operation: format!("publish to exchange '{exchange}'"),
        code: 404,
        text,
    }
}
