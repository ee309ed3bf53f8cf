//! Moving aside a message lapin cannot parse.
//!
//! lapin fails the whole consuming connection on a message whose header
//! names or short-string properties are not UTF-8; the broker gives the
//! message back, the consumer subscribes again, gets it again, and so on
//! forever, while the messages behind it wait. So when the consuming
//! connection was lost that way (the broker counts such losses), the
//! consumer runs [`rescue`] before it subscribes again: over a connection
//! of rabbitry's raw client, which keeps every name as bytes, it takes the
//! head of its queue (up to its prefetch, the window lapin was given),
//! republishes each message lapin cannot parse to its error exchange with
//! confirms, byte for byte and with rabbitry's failure headers, acks it,
//! and gives every other message back in order.
//!
//! Nothing is lost: a message is acked only after the broker confirmed its
//! copy, and whatever is not acked goes back to the queue with a nack, or
//! when the raw connection closes (the rescue is bounded; cut short, it
//! drops the connection).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use super::builder::Inner;
use super::disposition::FailureKind;
use super::republish::headers;
use crate::config::BrokerConfig;
use crate::raw::{RawClient, RawMessage, RawProperties, RawTable, RawValue, lapin_cannot_parse};

/// Bound on a whole rescue: connect, take, republish, give back.
const RESCUE_LIMIT: Duration = Duration::from_secs(30);

/// What `x-exception-message` says on a rescued copy.
const REASON: &str = "lapin cannot parse this message: a header name or property is not UTF-8";

/// The most taken in one rescue when the prefetch does not say.
const MAX_TAKEN: u16 = 1000;

/// The consumer a rescue works for.
pub(crate) struct Target<'a> {
    /// The queue to look at.
    pub(crate) queue: &'a str,
    /// Where unparseable messages go.
    pub(crate) error_exchange: &'a str,
    /// The consumer's name, for `x-consumer`.
    pub(crate) consumer: &'a str,
    /// How many messages to look at: the window lapin was given.
    pub(crate) prefetch: u16,
}

/// Runs [`rescue`] for a consumer whose connection was lost to a message
/// lapin cannot parse. Bounded, cut short by `shutdown`, and never fatal:
/// a failure is logged and the consumer subscribes again (the broker's
/// delivery limit on quorum queues is the backstop).
pub(crate) async fn after_unparseable_loss(inner: &Inner, shutdown: &CancellationToken) {
    let target = Target {
        queue: &inner.queue,
        error_exchange: &inner.error_exchange,
        consumer: &inner.name,
        prefetch: inner.prefetch,
    };
    let config = inner.broker.config();
    let outcome = tokio::select! {
        () = shutdown.cancelled() => return,
        r = tokio::time::timeout(RESCUE_LIMIT, rescue(config, &target)) => r,
    };
    match outcome {
        Ok(Ok(0)) => tracing::info!(
            consumer = inner.name,
            queue = inner.queue,
            "no message lapin cannot parse at the head of the queue"
        ),
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::warn!(
            consumer = inner.name,
            queue = inner.queue,
            %error,
            "moving aside a message lapin cannot parse failed; what was taken goes back to the queue"
        ),
        Err(_) => tracing::warn!(
            consumer = inner.name,
            queue = inner.queue,
            limit = ?RESCUE_LIMIT,
            "moving aside a message lapin cannot parse took too long; what was taken goes back to the queue"
        ),
    }
}

/// Takes up to the prefetch from the head of the queue, moves each message
/// lapin cannot parse to the error exchange and gives the rest back.
/// Returns how many were moved.
pub(crate) async fn rescue(config: &BrokerConfig, target: &Target<'_>) -> io::Result<usize> {
    let Some(mut client) = connect(config).await? else {
        return Ok(0);
    };
    let limit = if target.prefetch == 0 {
        MAX_TAKEN
    } else {
        target.prefetch
    };
    client.qos(limit).await?;
    let mut taken = Vec::new();
    while taken.len() < usize::from(limit) {
        match client.get_unacked(target.queue).await? {
            Some(message) => taken.push(message),
            None => break,
        }
    }
    let mut moved = 0;
    let (mut give_back, mut kept) = (Vec::new(), Vec::new());
    for (position, message) in taken.iter().enumerate() {
        let Some(why) = lapin_cannot_parse(message) else {
            give_back.push(message.delivery_tag);
            continue;
        };
        match move_aside(&mut client, target, message).await {
            Ok(()) => {
                client.ack(message.delivery_tag).await?;
                moved += 1;
                tracing::error!(
                    consumer = target.consumer,
                    queue = target.queue,
                    error_exchange = target.error_exchange,
                    position,
                    bytes = message.body.len(),
                    why,
                    "a message lapin cannot parse was moved to the error exchange"
                );
            }
            Err(error) => {
                tracing::error!(
                    consumer = target.consumer,
                    queue = target.queue,
                    error_exchange = target.error_exchange,
                    position,
                    %error,
                    "a message lapin cannot parse could not be moved to the error exchange; it goes back to the queue"
                );
                kept.push(message.delivery_tag);
            }
        }
    }
    // In queue order: a quorum queue delivers returned messages first, in
    // the order they came back; a classic queue puts each back where it was.
    // A bad message that could not be moved goes last, so that on a quorum
    // queue the valid ones are handed out before it kills the connection
    // again.
    for tag in give_back.into_iter().chain(kept) {
        client.nack(tag, false, true).await?;
    }
    client.close().await?;
    Ok(moved)
}

/// A raw connection to the first plain (not TLS) endpoint that answers, or
/// `None` when every endpoint uses TLS, which the raw client does not speak.
async fn connect(config: &BrokerConfig) -> io::Result<Option<RawClient>> {
    let mut last = None;
    for endpoint in config.endpoints().iter().filter(|e| !e.is_tls()) {
        match RawClient::connect_endpoint(endpoint, config.connect_timeout).await {
            Ok(mut client) => {
                client.timeout(config.operation_timeout);
                return Ok(Some(client));
            }
            Err(error) => last = Some(error),
        }
    }
    match last {
        Some(error) => Err(error),
        None => {
            static WARNED: AtomicBool = AtomicBool::new(false);
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "a message lapin cannot parse cannot be moved aside over TLS (amqps): rabbitry's raw client does not speak it; on a quorum queue the broker's delivery limit dead-letters it"
                );
            }
            Ok(None)
        }
    }
}

/// Publishes the copy with confirm; a return (no queue bound) or a nack is
/// an error.
async fn move_aside(
    client: &mut RawClient,
    target: &Target<'_>,
    message: &RawMessage,
) -> io::Result<()> {
    let exchange = target.error_exchange.as_bytes();
    match RawProperties::decode(&message.property_bytes) {
        Ok(properties) => {
            let (properties, routing_key) = dead_letter_copy(properties, message, target);
            client
                .publish_bytes(exchange, &routing_key, &properties, &message.body)
                .await
        }
        // Properties this client cannot decode cannot take the failure
        // headers: the copy keeps them exactly as they came.
        Err(_) => {
            client
                .publish_encoded(
                    exchange,
                    &message.routing_key,
                    &message.property_bytes,
                    &message.body,
                )
                .await
        }
    }
}

/// The properties of the error-exchange copy (as `republish::dead_letter_message`
/// builds them for messages lapin can read) and its routing key: the first
/// one the message had.
fn dead_letter_copy(
    mut p: RawProperties,
    message: &RawMessage,
    target: &Target<'_>,
) -> (RawProperties, Vec<u8>) {
    let mut h = p.headers.take().unwrap_or_default();
    h.retain(|(name, _)| name != b"x-delivery-count");
    if !h
        .iter()
        .any(|(n, _)| n == headers::ORIGINAL_EXCHANGE.as_bytes())
    {
        let exchange = RawValue::LongString(message.exchange.clone());
        set(&mut h, headers::ORIGINAL_EXCHANGE, exchange);
        let routing_key = RawValue::LongString(message.routing_key.clone());
        set(&mut h, headers::ORIGINAL_ROUTING_KEY, routing_key);
    }
    // Kept by the error queue: persistent, and no per-message TTL.
    p.delivery_mode = Some(2);
    if let Some(expiration) = p.expiration.take() {
        set(
            &mut h,
            headers::ORIGINAL_EXPIRATION,
            RawValue::LongString(expiration),
        );
    }
    let text = |s: &str| RawValue::LongString(s.as_bytes().to_vec());
    set(&mut h, headers::EXCEPTION_MESSAGE, text(REASON));
    set(
        &mut h,
        headers::EXCEPTION_KIND,
        text(FailureKind::Decode.as_str()),
    );
    set(&mut h, headers::ORIGINAL_QUEUE, text(target.queue));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    set(&mut h, headers::FAILED_AT, RawValue::Timestamp(now));
    set(&mut h, headers::CONSUMER, text(target.consumer));
    let routing_key = match h
        .iter()
        .find(|(n, _)| n == headers::ORIGINAL_ROUTING_KEY.as_bytes())
    {
        Some((_, RawValue::LongString(rk))) if rk.len() <= crate::wire::MAX_SHORT_STRING => {
            rk.clone()
        }
        _ => message.routing_key.clone(),
    };
    p.headers = Some(h);
    (p, routing_key)
}

/// Sets `name` in a table: in place when it is there, else at the end.
fn set(table: &mut RawTable, name: &str, value: RawValue) {
    match table.iter_mut().find(|(n, _)| n == name.as_bytes()) {
        Some((_, v)) => *v = value,
        None => table.push((name.as_bytes().to_vec(), value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target<'static> {
        Target {
            queue: "orders",
            error_exchange: "orders.dlx",
            consumer: "c1",
            prefetch: 10,
        }
    }

    fn message(properties: &RawProperties) -> RawMessage {
        RawMessage {
            delivery_tag: 1,
            redelivered: true,
            exchange: b"ex\xff".to_vec(),
            routing_key: b"rk".to_vec(),
            properties: properties.clone(),
            property_bytes: properties.encode().expect("encodes"),
            body: b"body".to_vec(),
        }
    }

    fn header<'t>(p: &'t RawProperties, name: &str) -> Option<&'t RawValue> {
        crate::raw::raw_header(p.headers.as_ref()?, name.as_bytes())
    }

    #[test]
    fn the_copy_keeps_every_byte_and_adds_the_failure_headers() {
        let original = RawProperties {
            message_id: Some(b"id-\xff".to_vec()),
            expiration: Some(b"60000".to_vec()),
            delivery_mode: Some(1),
            headers: Some(vec![
                (b"bad-\xc3\x28".to_vec(), RawValue::I32(7)),
                (b"x-delivery-count".to_vec(), RawValue::I64(3)),
            ]),
            ..RawProperties::default()
        };
        let (copy, routing_key) =
            dead_letter_copy(original.clone(), &message(&original), &target());
        assert_eq!(routing_key, b"rk");
        assert_eq!(copy.message_id, original.message_id);
        assert_eq!(copy.delivery_mode, Some(2), "persistent");
        assert_eq!(
            copy.expiration, None,
            "no per-message TTL in the error queue"
        );
        let long = |b: &[u8]| Some(RawValue::LongString(b.to_vec()));
        assert_eq!(
            header(&copy, headers::ORIGINAL_EXPIRATION).cloned(),
            long(b"60000")
        );
        assert_eq!(
            crate::raw::raw_header(copy.headers.as_ref().expect("headers"), b"bad-\xc3\x28"),
            Some(&RawValue::I32(7)),
            "the foreign header is kept byte for byte"
        );
        assert_eq!(header(&copy, "x-delivery-count"), None);
        assert_eq!(
            header(&copy, headers::EXCEPTION_KIND).cloned(),
            long(b"decode")
        );
        assert_eq!(
            header(&copy, headers::ORIGINAL_EXCHANGE).cloned(),
            long(b"ex\xff")
        );
        assert_eq!(
            header(&copy, headers::ORIGINAL_ROUTING_KEY).cloned(),
            long(b"rk")
        );
        assert_eq!(
            header(&copy, headers::ORIGINAL_QUEUE).cloned(),
            long(b"orders")
        );
        assert_eq!(header(&copy, headers::CONSUMER).cloned(), long(b"c1"));
        assert_eq!(
            header(&copy, headers::EXCEPTION_MESSAGE).cloned(),
            long(REASON.as_bytes())
        );
        assert!(matches!(
            header(&copy, headers::FAILED_AT),
            Some(RawValue::Timestamp(_))
        ));
    }

    /// The raw client does not speak TLS: with only `amqps://` endpoints
    /// the rescue does nothing (and connects nowhere), rather than fail.
    #[tokio::test]
    async fn with_only_tls_endpoints_the_rescue_does_nothing() {
        let config = BrokerConfig::builder()
            .endpoint("amqps://u:secret@127.0.0.1:1/%2f")
            .build()
            .expect("config");
        assert_eq!(rescue(&config, &target()).await.expect("no error"), 0);
    }

    #[test]
    fn the_first_origin_is_kept_and_routes_the_copy() {
        let original = RawProperties {
            headers: Some(vec![
                (
                    headers::ORIGINAL_EXCHANGE.as_bytes().to_vec(),
                    RawValue::LongString(b"first-ex".to_vec()),
                ),
                (
                    headers::ORIGINAL_ROUTING_KEY.as_bytes().to_vec(),
                    RawValue::LongString(b"first-rk".to_vec()),
                ),
            ]),
            ..RawProperties::default()
        };
        let (copy, routing_key) =
            dead_letter_copy(original.clone(), &message(&original), &target());
        assert_eq!(routing_key, b"first-rk");
        assert_eq!(
            header(&copy, headers::ORIGINAL_EXCHANGE),
            Some(&RawValue::LongString(b"first-ex".to_vec()))
        );
    }
}
