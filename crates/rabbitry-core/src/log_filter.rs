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
/// examples do:
///
/// ```
/// let filter = std::env::var("RUST_LOG")
///     .unwrap_or_else(|_| rabbitry_core::RECOMMENDED_LOG_FILTER.to_owned());
/// // tracing_subscriber::fmt().with_env_filter(filter).init();
/// # assert!(!filter.is_empty());
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
