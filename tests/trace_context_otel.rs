//! With the `otel` feature: a message created inside a traced span carries
//! that span's context, and the consumer's `process` span is its child,
//! whether the message was published directly or went through the outbox
//! and the relay. Spans are read back from OpenTelemetry's in-memory
//! exporter. Against the real broker and Postgres.
//!
//! Run with `cargo test -p rabbitry --features otel --test trace_context_otel`
//! (`.ci/run` does). Its own test binary: it installs the global subscriber.

mod common;
mod trace_support;

use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use rabbitry::Message;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test]
async fn the_consumer_span_continues_the_producer_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("rabbitry-tests")));
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "trace-otel").await;
    let root = tracing::info_span!("place-order");
    let (direct, queued) = root.in_scope(|| {
        (
            Message::bytes("", &queue, "direct"),
            Message::bytes("", &queue, "queued"),
        )
    });
    let root_context = root.context().span().span_context().clone();
    assert!(root_context.is_valid());
    let expected = format!(
        "00-{}-{}-01",
        root_context.trace_id(),
        root_context.span_id()
    );
    assert_eq!(trace_support::traceparent(&direct), expected);
    assert_eq!(trace_support::traceparent(&queued), expected);

    let seen = trace_support::send_both_and_consume(&broker, &queue, direct, queued).await;
    assert!(
        seen.lock()
            .expect("lock")
            .iter()
            .all(|(_, tp)| *tp == expected),
        "{seen:?}"
    );
    drop(root);
    provider.force_flush().expect("flush");
    let process: Vec<_> = exporter
        .get_finished_spans()
        .expect("spans")
        .into_iter()
        .filter(|s| s.name == format!("{queue} process"))
        .collect();
    assert_eq!(process.len(), 2, "one process span per message");
    for span in process {
        assert_eq!(span.span_context.trace_id(), root_context.trace_id());
        assert_eq!(span.parent_span_id, root_context.span_id());
    }
}
