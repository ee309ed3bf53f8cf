//! `rabbitry-relay errors list` as an operator pipes it: no colour codes,
//! readable times, totals, paging and filters; the queue is unchanged.

mod support;

use std::process::{Command, Output, Stdio};

use rabbitry_core::{Message, Publisher, Queue, headers};
use rabbitry_testkit::{queue_depth, services};

use support::BIN;

fn relay(args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .env("RABBITRY_AMQP_URL", services().amqp_url())
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("run rabbitry-relay");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test]
async fn errors_list_pages_filters_and_prints_totals_without_colour_codes() {
    let (broker, queue, _cleanup) = support::broker_and_queue("relay-errors-list").await;
    let dlq = Queue::dead_letter_queue_name(&queue);
    let publisher = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");
    let mut ids = Vec::new();
    for i in 0..40_i64 {
        let error = if i % 4 == 0 {
            "SmtpTimeout\x1b[31m\nline two"
        } else {
            "BadInput"
        };
        let m = Message::bytes("", &dlq, format!("body {i}"))
            .header(headers::ORIGINAL_EXCHANGE, "")
            .header(headers::ORIGINAL_ROUTING_KEY, queue.as_str())
            .header(headers::EXCEPTION_MESSAGE, error)
            .header(headers::FAILED_AT, 1_796_565_787_i64);
        ids.push(m.id().to_owned());
        publisher.send(m).await.expect("publish");
    }

    let out = relay(&[
        "errors", "list", "--queue", &dlq, "--limit", "5", "--offset", "5",
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        !stdout.contains('\x1b') && !stderr.contains('\x1b'),
        "no escape codes in a pipe:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("2026-12-06T14:03:07Z"), "{stdout}");
    assert!(
        stdout.contains(&format!("showing 6-10 of 40 matching (40 in {dlq})")),
        "{stdout}"
    );
    let shown: Vec<&str> = ids[5..10].iter().map(String::as_str).collect();
    for id in &shown {
        assert!(stdout.contains(id), "{id} in\n{stdout}");
    }
    assert!(!stdout.contains(&ids[4]) && !stdout.contains(&ids[10]));

    let out = relay(&[
        "errors",
        "list",
        "--queue",
        &dlq,
        "--exception",
        "smtptimeout",
        "--json",
    ]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let want: Vec<&String> = ids.iter().step_by(4).collect();
    let got: Vec<&str> = lines
        .iter()
        .map(|v| v["message_id"].as_str().expect("id"))
        .collect();
    assert_eq!(got, want.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert_eq!(lines[0]["failed_at"], "2026-12-06T14:03:07Z");
    let totals = String::from_utf8_lossy(&out.stderr);
    assert!(
        totals.contains("showing 1-10 of 10 matching (40 in"),
        "{totals}"
    );

    let out = relay(&["errors", "list", "--queue", &dlq, "--after", &ids[37]]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&ids[38]) && stdout.contains(&ids[39]) && !stdout.contains(&ids[37]));
    assert_eq!(queue_depth(&dlq).await, Some(40), "listing removed nothing");
}
