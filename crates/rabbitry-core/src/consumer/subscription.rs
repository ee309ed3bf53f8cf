//! Subscribing: declare what is needed, check the queue, open a channel,
//! set the prefetch, start consuming. Every broker call is bounded.

use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::mpsc;

use super::builder::{AckMode, Inner};
use super::settle::{SettleGuard, SettleMsg};
use crate::bounded::{bounded, within};
use crate::connection::Role;
use crate::error::{Error, Result};

pub(crate) struct Subscription {
    pub(crate) channel: lapin::Channel,
    pub(crate) stream: lapin::Consumer,
    pub(crate) tag: String,
}

pub(crate) async fn subscribe(inner: &Inner) -> Result<Subscription> {
    if let Some(t) = &inner.topology {
        inner.broker.declare(t).await?;
    }
    // Before declaring anything of its own (retry queues named after it): a
    // queue that does not exist is a typo or a missing declaration, and
    // says so.
    if let Err(error) = inner.broker.queue_stats(&inner.queue).await {
        return Err(match error {
            Error::Broker { code: 404, .. } => Error::Config(format!(
                "queue '{}' does not exist: declare it, or give the consumer its topology",
                inner.queue
            )),
            other => other,
        });
    }
    if inner.ack_mode == AckMode::Auto && !inner.retry.delays.is_empty() {
        inner
            .broker
            .declare(&inner.retry.topology(&inner.queue))
            .await?;
    }
    let channel = inner.broker.open_channel(Role::Consume).await?;
    let timeout = inner.broker.operation_timeout();
    if inner.ack_mode != AckMode::None {
        bounded(
            timeout,
            "basic.qos",
            channel.basic_qos(inner.prefetch, BasicQosOptions::default()),
        )
        .await?;
    }
    let tag = format!(
        "{}-{}",
        inner.name,
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    let options = BasicConsumeOptions {
        no_ack: inner.ack_mode == AckMode::None,
        ..Default::default()
    };
    let stream = within(
        timeout,
        "basic.consume",
        channel.basic_consume(
            inner.queue.as_str().into(),
            tag.as_str().into(),
            options,
            FieldTable::default(),
        ),
    )
    .await?
    .map_err(|e| match Error::from_lapin("basic.consume", &e) {
        Error::Broker { code, text, .. } => Error::Broker {
            operation: format!("consume from queue '{}'", inner.queue),
            code,
            text,
        },
        other => other,
    })?;
    Ok(Subscription {
        channel,
        stream,
        tag,
    })
}

impl Subscription {
    /// Stops intake: cancels the subscription and gives back what the
    /// broker had already sent but no handler took.
    pub(crate) async fn cancel(
        &mut self,
        timeout: std::time::Duration,
        settle: Option<&mpsc::UnboundedSender<SettleMsg>>,
    ) -> usize {
        let _ = tokio::time::timeout(
            timeout,
            self.channel
                .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default()),
        )
        .await;
        let mut given_back = 0;
        while let Ok(Some(Ok(d))) =
            tokio::time::timeout(std::time::Duration::from_millis(100), self.stream.next()).await
        {
            if let Some(settle) = settle
                && d.acker.usable()
            {
                // Dropped unsent: given back.
                drop(SettleGuard::new(settle, d.delivery_tag, d.acker.clone()));
                given_back += 1;
            }
        }
        given_back
    }
}
