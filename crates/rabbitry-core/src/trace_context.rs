//! W3C trace context in message headers (`traceparent`).
//!
//! Every message gets a `traceparent` when it is created, and it travels
//! with the message unchanged: through the publisher, the outbox row and
//! the relay, and retries and dead-letter copies. A consumer's `process`
//! span records it.
//!
//! With the `otel` feature, the header is the current `tracing` span's
//! OpenTelemetry context (through `tracing-opentelemetry`) when there is
//! one, and the consumer's `process` span takes the header's context as its
//! parent: the consumer continues the producer's trace. Without the
//! feature, or outside any traced span, each message starts a trace of its
//! own (random ids).

/// The `traceparent` for a message created now.
pub(crate) fn outgoing() -> String {
    #[cfg(feature = "otel")]
    if let Some(current) = otel::current() {
        return current;
    }
    random()
}

/// What a `process` span records of a delivery's `traceparent`: the header
/// when it is a valid one, `"invalid"` otherwise (another client's header
/// may be anything, of any length), `""` when there is none.
pub(crate) fn recorded(traceparent: &str) -> &str {
    match traceparent {
        "" => "",
        t if parse(t).is_some() => t,
        _ => "invalid",
    }
}

/// Makes `span` continue the trace in `traceparent`, when it is valid (and
/// only with the `otel` feature).
pub(crate) fn continue_in(span: &tracing::Span, traceparent: &str) {
    #[cfg(feature = "otel")]
    otel::set_parent(span, traceparent);
    #[cfg(not(feature = "otel"))]
    let _ = (span, traceparent);
}

fn random() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    // All-zero ids are invalid in W3C trace context.
    let trace: u128 = rng.random_range(1..=u128::MAX);
    let span: u64 = rng.random_range(1..=u64::MAX);
    // Written by hand: `format!` with `{:032x}` costs more than the rest of
    // building a message.
    let mut text = String::with_capacity(55);
    text.push_str("00-");
    push_hex(&mut text, &trace.to_be_bytes());
    text.push('-');
    push_hex(&mut text, &span.to_be_bytes());
    text.push_str("-01");
    text
}

/// Appends `bytes` as lowercase hex.
fn push_hex(text: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// A `traceparent` parsed: version 00, 32 and 16 lowercase hex digits, not
/// all zero, and the flags. Anything else (another client's header may be
/// anything) is ignored.
pub(crate) fn parse(traceparent: &str) -> Option<(u128, u64, u8)> {
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if parts.next().is_some()
        || version != "00"
        || !hex(trace, 32)
        || !hex(span, 16)
        || !hex(flags, 2)
    {
        return None;
    }
    let trace = u128::from_str_radix(trace, 16).ok()?;
    let span = u64::from_str_radix(span, 16).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    (trace != 0 && span != 0).then_some((trace, span, flags))
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// The current span's context as a `traceparent`, if it has a valid one.
    pub(super) fn current() -> Option<String> {
        let context = tracing::Span::current().context();
        let span = context.span();
        let sc = span.span_context();
        sc.is_valid().then(|| {
            format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            )
        })
    }

    pub(super) fn set_parent(span: &tracing::Span, traceparent: &str) {
        let Some((trace, id, flags)) = super::parse(traceparent) else {
            return;
        };
        let remote = SpanContext::new(
            TraceId::from(trace),
            SpanId::from(id),
            TraceFlags::new(flags),
            true,
            TraceState::default(),
        );
        let parent = opentelemetry::Context::new().with_remote_span_context(remote);
        let _ = span.set_parent(parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_random_traceparent_is_valid() {
        let t = random();
        assert!(parse(&t).is_some(), "{t}");
    }

    #[test]
    fn hostile_traceparents_are_ignored() {
        for bad in [
            "",
            "00",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c80319-cb7ad6b7169203331-01",
            "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            "00-é7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_eq!(recorded(&"x".repeat(100_000)), "invalid");
        assert_eq!(recorded(""), "");
        assert_eq!(
            parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            Some((0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331, 1))
        );
    }
}
