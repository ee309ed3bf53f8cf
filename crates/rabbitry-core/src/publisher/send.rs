//! One publish, from the checked message to its verdict.
//!
//! The common case is synchronous up to the confirm: the connection is not
//! blocked, the exchange is known to exist, and a channel has room in its
//! window; the publish then starts at once and its future only waits for
//! the verdict, under the publish timeout. Anything else (a blocked
//! connection, an exchange to check, a channel to open, a full window) goes
//! through a boxed slow path, so that its state is not part of every
//! publish's future (which callers that pipeline allocate per message).

use std::future::Future;
use std::pin::Pin;

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Publisher;
use super::channels::Lease;
use super::confirms::{self, Reply, Verdict};
use super::metrics::error_type;
use crate::connection::{ConnectionState, Role};
use crate::error::{Error, Result};
use crate::message::{Message, check_size};
use crate::wire;

/// A message as it goes on the wire, checked.
struct Outgoing {
    exchange: ShortString,
    routing_key: ShortString,
    properties: lapin::BasicProperties,
    mandatory: bool,
}

/// Where a publish stands after its synchronous start.
enum Start<'a> {
    /// Handed to a channel's collector: the verdict comes on the receiver.
    Sent(Started),
    /// It must wait (blocked, exchange check, channel, window) first: the
    /// rest of its start, boxed.
    Later(Pin<Box<dyn Future<Output = Result<Started>> + Send + 'a>>),
}

/// A started publish: its verdict's receiver, and when it is due.
type Started = (oneshot::Receiver<Reply>, Instant);

impl Publisher {
    pub(super) async fn send_inner(&self, message: &Message, mandatory: bool) -> Result<()> {
        let (verdict, deadline) = match self.try_start(message, mandatory)? {
            Start::Sent(started) => started,
            Start::Later(rest) => rest.await?,
        };
        // The collector measures the latency: nothing about it is kept in
        // this future across the wait (callers that pipeline allocate one
        // per message).
        let (result, latency) = match tokio::time::timeout_at(deadline, verdict).await {
            Ok(Ok((verdict, latency))) => (judge(message, Ok(verdict)), Some(latency)),
            Ok(Err(stopped)) => (judge(message, Err(stopped)), None),
            Err(_) => {
                let timeout = self.inner.settings.timeout;
                (Err(timed_out(message, timeout)), Some(timeout))
            }
        };
        if let Some(latency) = latency {
            self.inner.counters.confirm_latency(&result, latency);
        }
        if let Err(e) = &result {
            // `send_prepared` runs this inside its publish span, unless that
            // span is disabled: then the current one is the caller's.
            let span = tracing::Span::current();
            if span
                .metadata()
                .is_some_and(|m| m.target() == crate::SPAN_TARGET && m.name() == "publish")
            {
                span.record("error.type", error_type(e));
            }
            if let Error::Broker { code: 404, .. } = e {
                self.inner.exchanges.forget(message.exchange_name());
            }
        }
        result
    }

    /// Checks the message, and sends it if nothing needs waiting for.
    fn try_start<'a>(&'a self, message: &'a Message, mandatory: bool) -> Result<Start<'a>> {
        // Everything about the message itself is checked before anything
        // is sent: a bad message fails alone, harming no other publish.
        check_size(message, self.inner.settings.max_message_size)?;
        let (exchange, routing_key) = wire::destination(message)?;
        let outgoing = Outgoing {
            exchange,
            routing_key,
            properties: wire::amqp_properties(message)?,
            mandatory,
        };
        let ready = !self.is_blocked() && self.inner.exchanges.known(message.exchange_name());
        match ready.then(|| self.inner.channels.try_lease()).flatten() {
            Some(lease) => {
                // The one clock reading at the start: the latency's origin
                // and the deadline's.
                let now = Instant::now();
                let verdict = submit(lease, message, outgoing, now)?;
                Ok(Start::Sent((verdict, now + self.inner.settings.timeout)))
            }
            None => Ok(Start::Later(Box::pin(self.start_later(message, outgoing)))),
        }
    }

    /// The slow path: waits while the connection is blocked (bounded by
    /// `blocked_timeout`), then, within the publish timeout, checks the
    /// exchange and leases a channel. Returns the verdict's receiver and
    /// the deadline it must arrive by.
    async fn start_later(&self, message: &Message, outgoing: Outgoing) -> Result<Started> {
        self.wait_while_blocked().await?;
        let timeout = self.inner.settings.timeout;
        let began = Instant::now();
        let deadline = began + timeout;
        let started = tokio::time::timeout_at(deadline, async {
            self.inner
                .exchanges
                .ensure(&self.inner.broker, message.exchange_name())
                .await?;
            let lease = self.inner.channels.lease().await?;
            submit(lease, message, outgoing, began)
        })
        .await;
        match started {
            Ok(verdict) => Ok((verdict?, deadline)),
            Err(_) => Err(timed_out(message, timeout)),
        }
    }

    fn is_blocked(&self) -> bool {
        matches!(
            self.inner.broker.state(Role::Publish),
            ConnectionState::Blocked { .. }
        )
    }

    async fn wait_while_blocked(&self) -> Result<()> {
        let mut state = self.inner.broker.watch_state(Role::Publish);
        let reason = match &*state.borrow_and_update() {
            ConnectionState::Blocked { reason } => reason.clone(),
            _ => return Ok(()),
        };
        let started = std::time::Instant::now();
        let limit = self.inner.settings.blocked_timeout;
        tracing::warn!(%reason, ?limit, "publishing connection is blocked; waiting");
        let unblocked = tokio::time::timeout(limit, async {
            while matches!(*state.borrow_and_update(), ConnectionState::Blocked { .. }) {
                if state.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        match unblocked {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::Blocked {
                waited: started.elapsed(),
                reason,
            }),
        }
    }
}

/// Starts the publish on the leased channel and hands it to the channel's
/// collector, with the window place it holds until its verdict.
fn submit(
    lease: Lease,
    message: &Message,
    outgoing: Outgoing,
    sent_at: Instant,
) -> Result<oneshot::Receiver<Reply>> {
    let channel = &lease.channel;
    wire::check_header_frame(message, channel.frame_max)?;
    let publish = start_publish(channel.channel.clone(), outgoing, message.shared_payload());
    Ok(channel
        .confirms
        .submit(message.id(), publish, lease.permit, sent_at))
}

/// The whole publish of one message, `basic_publish` then its confirm, for
/// the collector to own from its first poll on: it owns a handle on the
/// channel and a shared reference to the payload. A plain function, so that
/// the publish's state lives in its box and not in the caller's future.
fn start_publish(
    channel: lapin::Channel,
    outgoing: Outgoing,
    payload: bytes::Bytes,
) -> confirms::Publish {
    let options = BasicPublishOptions {
        mandatory: outgoing.mandatory,
        ..Default::default()
    };
    Box::pin(async move {
        channel
            .basic_publish(
                outgoing.exchange,
                outgoing.routing_key,
                options,
                &payload,
                outgoing.properties,
            )
            .await?
            .await
    })
}

/// What a verdict means for the caller.
fn judge(
    message: &Message,
    verdict: std::result::Result<Verdict, oneshot::error::RecvError>,
) -> Result<()> {
    match verdict {
        Ok(Verdict::Confirmed) => Ok(()),
        Ok(Verdict::Unroutable { reply }) => Err(Error::Unroutable {
            message_id: message.id().to_owned(),
            exchange: message.exchange_name().to_owned(),
            routing_key: message.routing_key().to_owned(),
            reply,
        }),
        Ok(Verdict::Nacked) => Err(Error::Nacked {
            message_id: message.id().to_owned(),
        }),
        Ok(Verdict::NotRequested) => Err(Error::ConnectionLost {
            operation: "basic.publish",
            reason: "channel lost confirm mode".into(),
        }),
        // The channel failed (or lost track) before the confirm came:
        // whether the broker has the message is unknown, and the cause is
        // the channel's, not this message's (a channel closed by another
        // message's 404 fails every confirm in flight on it).
        Ok(Verdict::Lost(reason)) => Err(match over_broker_limit(&reason, message) {
            // This message is the one the broker refused for its size: a
            // resend would be refused again.
            Some(max) => Error::TooLarge {
                what: "payload (over the broker's max_message_size)",
                size: message.payload().len(),
                max,
            },
            None => Error::ConnectionLost {
                operation: "basic.publish confirm",
                reason,
            },
        }),
        Err(_) => Err(Error::ConnectionLost {
            operation: "basic.publish confirm",
            reason: "the channel's confirm collector stopped".into(),
        }),
    }
}

/// The broker's limit, when `reason` is its 406 for a body over
/// `max_message_size` ("message size N is larger than configured max size
/// M") and N is this message's body size. The close fails every publish in
/// flight on the channel; only the big one is refused for its own sake.
fn over_broker_limit(reason: &str, message: &Message) -> Option<usize> {
    let number_after = |marker: &str| -> Option<usize> {
        let rest = &reason[reason.find(marker)? + marker.len()..];
        let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
        digits.parse().ok()
    };
    let size = number_after("message size ")?;
    let max = number_after("max size ")?;
    (size == message.payload().len() && size > max).then_some(max)
}

fn timed_out(message: &Message, timeout: std::time::Duration) -> Error {
    Error::TimedOut {
        message_id: message.id().to_owned(),
        timeout,
    }
}
