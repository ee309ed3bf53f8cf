//! Listing an error queue is a peek: it removes nothing, reorders nothing,
//! pages and filters in queue order, and its totals add up; replay stays
//! exact and leaves what it does not replay in place.

mod common;

use std::time::Duration;

use rabbitry::lapin::types::AMQPValue;
use rabbitry::{Broker, ErrorFilter, ErrorQueue, ListQuery, Message, Publisher, Queue, headers};
use rabbitry_testkit::{collect, message_ids, queue_depth};

const FAILURES: usize = 300;

/// An error queue holding `FAILURES` failed copies, in publish order: every
/// third a timeout, the rest a validation error; keys alternate.
async fn filled(
    prefix: &str,
) -> (
    Broker,
    String,
    String,
    Vec<Message>,
    rabbitry_testkit::BrokerCleanup,
) {
    let broker = common::broker().await;
    let (work, cleanup) = common::work_queue(&broker, prefix).await;
    let dlq = Queue::dead_letter_queue_name(&work);
    let publisher = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");
    let messages: Vec<Message> = (0..FAILURES)
        .map(|i| {
            let (kind, error) = if i % 3 == 0 {
                ("retryable", format!("MailTimeout: try {i}"))
            } else {
                ("permanent", format!("ValidationError: field {i}"))
            };
            Message::bytes("", &dlq, format!("payload {i}"))
                .header(headers::ORIGINAL_EXCHANGE, "")
                .header(headers::ORIGINAL_ROUTING_KEY, work.as_str())
                .header(headers::EXCEPTION_MESSAGE, error)
                .header(headers::EXCEPTION_KIND, kind)
                .header(headers::FAILED_AT, 1_796_565_787_i64 + i as i64)
                .header(headers::ATTEMPTS, 3_i64)
                .header("tenant", if i % 2 == 0 { "acme" } else { "globex" })
        })
        .collect();
    // Sent one by one: the queue's order is the publish order.
    for m in &messages {
        publisher.send(m.clone()).await.expect("publish to the dlq");
    }
    (broker, work, dlq, messages, cleanup)
}

fn ids(listing: &rabbitry::Listing) -> Vec<String> {
    listing
        .messages
        .iter()
        .map(|m| m.message_id.clone())
        .collect()
}

#[tokio::test]
async fn listings_change_nothing_and_pages_follow_queue_order() {
    let (broker, _work, dlq, messages, _cleanup) = filled("eq-peek").await;
    let expected: Vec<String> = messages.iter().map(|m| m.id().to_owned()).collect();
    let errors = ErrorQueue::new(broker.clone(), &dlq);

    let all = errors
        .peek(&ListQuery::new().limit(FAILURES))
        .await
        .expect("peek");
    assert_eq!(ids(&all), expected, "the whole queue, in publish order");
    assert_eq!(
        (all.depth as usize, all.matched, all.scanned),
        (FAILURES, FAILURES, FAILURES)
    );
    assert!(all.complete);

    // Short listings many times over, then the whole queue again.
    for round in 0..10 {
        let page = errors
            .peek(&ListQuery::new().limit(20))
            .await
            .expect("peek");
        assert_eq!(ids(&page), expected[..20], "listing {round}");
    }
    let again = errors
        .peek(&ListQuery::new().limit(FAILURES))
        .await
        .expect("peek");
    assert_eq!(ids(&again), expected, "nothing reordered");
    assert_eq!(
        queue_depth(&dlq).await,
        Some(FAILURES as u32),
        "nothing removed"
    );

    // Pages by offset and by the last id seen cover the queue once, in order.
    let (mut by_offset, mut by_after) = (Vec::new(), Vec::new());
    let mut after: Option<String> = None;
    for page in 0..(FAILURES / 70 + 1) {
        let p = errors
            .peek(&ListQuery::new().limit(70).offset(page * 70))
            .await
            .expect("peek");
        by_offset.extend(ids(&p));
        let mut q = ListQuery::new().limit(70);
        if let Some(a) = after.take() {
            q = q.after(a);
        }
        let p = errors.peek(&q).await.expect("peek");
        after = p.messages.last().map(|m| m.message_id.clone());
        by_after.extend(ids(&p));
    }
    assert_eq!(by_offset, expected);
    assert_eq!(by_after, expected);

    // What a listing reads back, field by field.
    let first = &all.messages[0];
    assert_eq!(
        first.failed_at_rfc3339().as_deref(),
        Some("2026-12-06T14:03:07Z")
    );
    assert_eq!(first.reason(), "MailTimeout: try 0");
    assert_eq!(first.preview, "payload 0");
}

#[tokio::test]
async fn filters_pick_by_reason_exception_and_routing_key_with_totals() {
    let (broker, work, dlq, messages, _cleanup) = filled("eq-filter").await;
    let errors = ErrorQueue::new(broker.clone(), &dlq);
    let timeouts: Vec<String> = messages
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 == 0)
        .map(|(_, m)| m.id().to_owned())
        .collect();

    let by_text = ListQuery::new()
        .limit(FAILURES)
        .filter(ErrorFilter::new().exception_contains("mailtimeout"));
    let l = errors.peek(&by_text).await.expect("peek");
    assert_eq!(ids(&l), timeouts);
    assert_eq!((l.matched, l.depth as usize), (timeouts.len(), FAILURES));

    let by_kind = ListQuery::new()
        .limit(5)
        .offset(10)
        .filter(ErrorFilter::new().reason("retryable"));
    let l = errors.peek(&by_kind).await.expect("peek");
    assert_eq!(ids(&l), timeouts[10..15], "a page of the matches");
    assert_eq!(l.matched, timeouts.len(), "the total counts every match");

    let l = errors
        .peek(&ListQuery::new().filter(ErrorFilter::new().routing_key("elsewhere")))
        .await
        .expect("peek");
    assert_eq!((l.messages.len(), l.matched), (0, 0));
    let l = errors
        .peek(
            &ListQuery::new()
                .limit(1)
                .filter(ErrorFilter::new().routing_key(&work).reason("permanent")),
        )
        .await
        .expect("peek");
    assert_eq!(l.matched, FAILURES - timeouts.len());

    // A scan bound below the depth says so.
    let l = errors
        .peek(&ListQuery::new().scan(100))
        .await
        .expect("peek");
    assert_eq!((l.scanned, l.complete), (100, false));
    assert_eq!(queue_depth(&dlq).await, Some(FAILURES as u32));
}

#[tokio::test]
async fn replay_where_republishes_exactly_the_matches_and_keeps_the_rest_in_order() {
    let (broker, work, dlq, messages, _cleanup) = filled("eq-replay").await;
    let errors = ErrorQueue::new(broker.clone(), &dlq);
    let publisher = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");
    let (timeouts, others): (Vec<_>, Vec<_>) =
        messages.iter().enumerate().partition(|(i, _)| i % 3 == 0);

    let report = errors
        .replay_where(&publisher, None, &ErrorFilter::new().reason("retryable"))
        .await
        .expect("replay");
    assert_eq!(
        (report.replayed, report.not_matching, report.skipped),
        (timeouts.len(), others.len(), 0)
    );

    let got = collect(&work, timeouts.len() as u32, Duration::from_secs(30)).await;
    let want: Vec<String> = timeouts.iter().map(|(_, m)| m.id().to_owned()).collect();
    assert_eq!(message_ids(&got), want, "the same ids, in order");
    let left = errors
        .peek(&ListQuery::new().limit(FAILURES))
        .await
        .expect("peek");
    let want_left: Vec<String> = others.iter().map(|(_, m)| m.id().to_owned()).collect();
    assert_eq!(ids(&left), want_left, "the rest stays, in order");

    // Exact: payload and the message's own headers as published; the
    // failure headers gone; a replay count.
    let sample = &got[0];
    let original = timeouts[0].1;
    assert_eq!(sample.data, original.payload());
    let h = sample
        .properties
        .headers()
        .as_ref()
        .expect("headers")
        .inner();
    assert_eq!(
        h.get("tenant"),
        Some(&AMQPValue::LongString("acme".into())),
        "the message's own header, as published"
    );
    assert!(
        matches!(h.get("x-replayed"), Some(v) if v.as_long_long_int() == Some(1) || v.as_long_int() == Some(1))
    );
    assert!(h.get(headers::EXCEPTION_MESSAGE).is_none());
    assert!(h.get(headers::FAILED_AT).is_none());
}

#[tokio::test]
async fn a_listing_counts_at_most_one_delivery_per_message() {
    let (broker, _work, dlq, _messages, _cleanup) = filled("eq-count").await;
    let errors = ErrorQueue::new(broker.clone(), &dlq);
    let version = broker.server_version();
    let count = |l: &rabbitry::Listing| l.messages[0].delivery_count.unwrap_or(0);
    let before = count(&errors.peek(&ListQuery::new().limit(1)).await.expect("peek"));
    for _ in 0..5 {
        errors
            .peek(&ListQuery::new().limit(FAILURES))
            .await
            .expect("peek");
    }
    let after = count(&errors.peek(&ListQuery::new().limit(1)).await.expect("peek"));
    println!("RabbitMQ {version:?}: x-delivery-count {before} -> {after} over 6 listings");
    // Up to 4.2 every return counts; from 4.3 a nack does not.
    assert!(after - before <= 6, "{before} -> {after}");
    assert_eq!(
        queue_depth(&dlq).await,
        Some(FAILURES as u32),
        "nothing dropped"
    );
}
