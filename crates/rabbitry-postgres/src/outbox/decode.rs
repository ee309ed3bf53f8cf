//! Turning a stored row back into a message the broker will take.
//!
//! A row is written by rabbitry, but also by other programs, by hand, or by
//! an older version. One that cannot become a publishable message must be
//! parked as dead at once: retrying cannot fix it, and a panic in the
//! publish path would stop every outbox delivery.

use rabbitry_core::{HeaderValue, Message, MessageProperties};
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::types::Json;

/// AMQP short strings (exchange, routing key, most properties, header
/// names) hold at most 255 bytes.
const SHORT_STRING_MAX: usize = 255;

/// Decodes a claimed row, or says why it cannot be published.
pub(crate) fn decode(row: &PgRow) -> Result<Message, String> {
    let properties: Json<serde_json::Value> = row
        .try_get("properties")
        .map_err(|_| "its properties are not JSON".to_owned())?;
    let properties: MessageProperties = serde_json::from_value(properties.0)
        .map_err(|e| format!("its properties cannot be decoded: {}", without_values(&e)))?;
    let exchange: String = row.try_get("exchange").map_err(|e| e.to_string())?;
    let routing_key: String = row.try_get("routing_key").map_err(|e| e.to_string())?;
    let payload: Vec<u8> = row.try_get("payload").map_err(|e| e.to_string())?;
    check_short_strings(&exchange, &routing_key, &properties)?;
    Ok(Message::from_parts(
        exchange,
        routing_key,
        payload,
        properties,
    ))
}

/// serde's message without the offending value (`invalid type: string
/// "…", expected u64`): properties may hold what the application put in its
/// headers, which does not belong in errors and logs.
fn without_values(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let head = text.split('"').next().unwrap_or_default();
    head.trim_end_matches([' ', ':']).to_owned()
}

fn check_short_strings(
    exchange: &str,
    routing_key: &str,
    p: &MessageProperties,
) -> Result<(), String> {
    let fields = [
        ("exchange", Some(exchange)),
        ("routing key", Some(routing_key)),
        ("message id", Some(p.message_id.as_str())),
        ("content type", p.content_type.as_deref()),
        ("content encoding", p.content_encoding.as_deref()),
        ("correlation id", p.correlation_id.as_deref()),
        ("reply-to", p.reply_to.as_deref()),
        ("type", p.kind.as_deref()),
        ("app id", p.app_id.as_deref()),
        ("expiration", p.expiration.as_deref()),
    ];
    for (name, value) in fields {
        if let Some(v) = value
            && v.len() > SHORT_STRING_MAX
        {
            return Err(too_long(name, v.len()));
        }
    }
    check_header_names(p.headers.iter())
}

fn check_header_names<'a>(
    headers: impl Iterator<Item = (&'a String, &'a HeaderValue)>,
) -> Result<(), String> {
    for (name, value) in headers {
        if name.len() > SHORT_STRING_MAX {
            return Err(too_long("header name", name.len()));
        }
        check_nested(value)?;
    }
    Ok(())
}

fn check_nested(value: &HeaderValue) -> Result<(), String> {
    match value {
        HeaderValue::Table(t) => check_header_names(t.iter()),
        HeaderValue::Array(a) => a.iter().try_for_each(check_nested),
        _ => Ok(()),
    }
}

fn too_long(field: &str, len: usize) -> String {
    format!("its {field} is {len} bytes long, above AMQP's {SHORT_STRING_MAX}")
}
