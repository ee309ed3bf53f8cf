//! The log filter rabbitry recommends, for a service's log output.
//!
//! rabbitry reports what happens to connections, channels, consumers and
//! messages itself, in lines that name the role, the endpoint (password
//! redacted), the queue and the consumer, and say what rabbitry does next.
//! Its dependencies log some of the same events again, at levels that do
//! not fit a service that handles them: lapin logs a channel the broker
//! closed at ERROR, also when rabbitry expected it (a passive declare that
//! finds nothing, a 406 it answers by declaring again) and returns it to
//! the caller as an [`Error`](crate::Error); lapin's WARN for a returned
//! message prints the message, body included, which puts payloads in the
//! logs; sqlx logs Postgres notices (`relation … already exists,
//! skipping`, on every migration) at INFO.

/// The `tracing` filter rabbitry recommends, in `RUST_LOG` syntax: INFO
/// for rabbitry and the application, third-party noise and payloads out.
///
/// | directive | why |
/// | --- | --- |
/// | `info` | rabbitry's own lines (connects, losses, returns, the declared topology, consumers, dead letters) and the application's |
/// | `lapin=error` | lapin's real failures stay visible (a panicked IO thread, a delivery it could not hand over, a frame it could not parse) |
/// | `lapin::channel=off` | a channel or connection the broker closed, logged by lapin at ERROR even when expected: rabbitry returns it to the caller as an error, or logs the loss itself at WARN with the broker's reason. Targets match by prefix, so this covers `lapin::channels` too, whose "Connection error" rabbitry's WARN repeats |
/// | `lapin::io_loop=off` | a socket that failed (reset by peer, closed half-way, a frame that does not parse): the connection is lost, and rabbitry logs that at WARN with the same error as its reason, the role and the endpoint (a frame that does not parse, at ERROR); lapin's line, at ERROR, has neither. A missed heartbeat (`lapin::heartbeat`) stays an ERROR |
/// | `lapin::returned_messages=off` | lapin prints a returned (unroutable) message with its body: a data leak. rabbitry reports it as `Error::Unroutable`, by message id |
/// | `sqlx=warn` | Postgres notices at INFO on every migration; slow statements (WARN) stay |
/// | `rabbitry::otel=off` | the per-message spans ([`SPAN_TARGET`](crate::SPAN_TARGET)) are for an OpenTelemetry layer, not for the log |
///
/// `RUST_LOG` should override it, as the `rabbitry-relay` binary and the
/// examples do, through [`log_filter`], which keeps the targets that print
/// payloads off whatever `RUST_LOG` says:
///
/// ```
/// let filter = rabbitry_core::log_filter(std::env::var("RUST_LOG").ok().as_deref());
/// // tracing_subscriber::fmt().with_env_filter(filter).init();
/// # assert!(filter.ends_with(rabbitry_core::PAYLOAD_TARGETS_OFF));
/// ```
///
/// To change one part, append a directive: one for a new target adds to it
/// (`…,rabbitry=debug`), one for a target named here replaces that one
/// (`…,lapin=warn`). The more specific targets keep their own level, so
/// returned messages stay out whatever level lapin gets.
///
/// When the same subscriber exports spans to OpenTelemetry, put the filter
/// on the log output's layer only: as a global filter, `rabbitry::otel=off`
/// would drop the spans from the export too.
pub const RECOMMENDED_LOG_FILTER: &str = "info,lapin=error,lapin::channel=off,lapin::io_loop=off,lapin::returned_messages=off,sqlx=warn,rabbitry::otel=off";

/// The lapin targets that print message bodies: a returned message at WARN
/// (`lapin::returned_messages`), and the frames a failed channel discards
/// at TRACE (`lapin::frames`). [`log_filter`] keeps them off.
pub const PAYLOAD_TARGETS_OFF: &str = "lapin::returned_messages=off,lapin::frames=off";

/// The filter to use: `rust_log` (the `RUST_LOG` variable) when it is set
/// and not blank, else [`RECOMMENDED_LOG_FILTER`]; either way followed by
/// [`PAYLOAD_TARGETS_OFF`], so that `RUST_LOG=debug` during an incident
/// does not put payloads in the log. (A directive for those targets in
/// `rust_log` is overridden: the last directive for a target wins.)
pub fn log_filter(rust_log: Option<&str>) -> String {
    let base = rust_log
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or(RECOMMENDED_LOG_FILTER);
    format!("{base},{PAYLOAD_TARGETS_OFF}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_overrides_the_recommendation_but_not_the_payload_targets() {
        assert_eq!(
            log_filter(None),
            format!("{RECOMMENDED_LOG_FILTER},{PAYLOAD_TARGETS_OFF}")
        );
        assert_eq!(log_filter(Some("  ")), log_filter(None));
        let f = log_filter(Some("debug,lapin=trace"));
        assert!(f.starts_with("debug,lapin=trace,"));
        assert!(f.ends_with("lapin::returned_messages=off,lapin::frames=off"));
    }
}
