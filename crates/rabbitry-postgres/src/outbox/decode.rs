//! Turning a stored row back into a message the broker will take.
//!
//! A row is written by rabbitry, but also by other programs, by hand, or by
//! an older version. One that cannot become a publishable message must be
//! parked as dead at once: retrying cannot fix it, and a panic in the
//! publish path would stop every outbox delivery.

use rabbitry_core::{Message, MessageProperties};
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::types::Json;

/// Decodes a claimed row, or says why it cannot be published.
pub(crate) fn decode(row: &PgRow) -> Result<Message, String> {
    // Straight from the column's bytes into the properties: a relay decodes
    // every row it sends, and going through a `serde_json::Value` first
    // cost a tenth of its CPU. Only a row that fails is decoded again, to
    // say why.
    let properties: MessageProperties =
        match row.try_get::<Json<MessageProperties>, _>("properties") {
            Ok(Json(properties)) => properties,
            Err(_) => return Err(why_not(row)),
        };
    let exchange: String = row.try_get("exchange").map_err(|e| e.to_string())?;
    let routing_key: String = row.try_get("routing_key").map_err(|e| e.to_string())?;
    let payload: Vec<u8> = row.try_get("payload").map_err(|e| e.to_string())?;
    let message = Message::from_parts(exchange, routing_key, payload, properties);
    // The publisher's own check (AMQP's 255-byte short strings, the
    // expiration's form); its error names the field, never the value.
    message
        .validate()
        .map_err(|e| format!("it cannot be sent: {e}"))?;
    Ok(message)
}

/// Why a row's properties do not decode: not JSON at all, or JSON that is
/// not a message's properties.
fn why_not(row: &PgRow) -> String {
    match row.try_get::<Json<serde_json::Value>, _>("properties") {
        Err(_) => "its properties are not JSON".to_owned(),
        Ok(Json(value)) => match serde_json::from_value::<MessageProperties>(value) {
            Err(e) => format!("its properties cannot be decoded: {}", without_values(&e)),
            Ok(_) => "its properties cannot be decoded".to_owned(),
        },
    }
}

/// serde's message without the offending value (`invalid type: string
/// "…", expected u64`): properties may hold what the application put in its
/// headers, which does not belong in errors and logs.
fn without_values(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let head = text.split('"').next().unwrap_or_default();
    head.trim_end_matches([' ', ':']).to_owned()
}
