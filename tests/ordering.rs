//! Ordered processing against the real broker: 4 partitions, 2 service
//! instances (one active consumer per partition, the other standing by),
//! per-key lanes, and retries that keep their key in order.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::ordering::{Instance, Recorder, Step, partitions, publish_streams, recording};
use rabbitry::{Delivery, HandlerError, OrderedRetry, Route};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_keys_of_two_hundred_are_each_handled_strictly_in_sequence() {
    let broker_a = common::broker().await;
    let broker_b = common::broker().await;
    let (p, mut cleanup) = partitions(&broker_a, 4, Route::Jump).await;
    let recorder = Recorder::default();
    let work = Duration::from_micros(200);
    let retry = OrderedRetry::default();
    let a = Instance::start(
        &broker_a,
        &p,
        "a",
        8,
        retry,
        recording(&recorder, "a", work),
    );
    let b = Instance::start(
        &broker_b,
        &p,
        "b",
        8,
        retry,
        recording(&recorder, "b", work),
    );

    publish_streams(&broker_a, &p, 50, 200).await;
    let done = common::eventually(Duration::from_secs(120), || async {
        recorder.complete(50, 200)
    })
    .await;

    assert!(recorder.faults().is_empty(), "{:?}", recorder.faults());
    assert!(
        done,
        "all 10,000 handled in time (handled {})",
        recorder.handled()
    );
    assert_eq!(
        recorder.duplicates(),
        0,
        "no consumer was lost, so nothing came twice"
    );
    assert_eq!(recorder.handled(), 10_000);
    // One active consumer per partition: whichever instance subscribed
    // first to a partition handled all of it.
    let (ha, hb) = (recorder.by_instance("a"), recorder.by_instance("b"));
    eprintln!("instance a handled {ha}, instance b {hb}");
    a.stop().await;
    b.stop().await;
    cleanup.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_failing_twice_then_succeeding_keeps_its_key_in_order() {
    let broker = common::broker().await;
    let (p, mut cleanup) = partitions(&broker, 2, Route::Jump).await;
    let recorder = Recorder::default();
    let runs: Arc<Mutex<HashMap<(String, u32), u32>>> = Arc::default();
    let handler = {
        let (recorder, runs) = (recorder.clone(), runs.clone());
        move |d: Delivery| {
            let (recorder, runs) = (recorder.clone(), runs.clone());
            async move {
                let step: Step = d.json().map_err(HandlerError::decode)?;
                let run = {
                    let mut runs = runs.lock().expect("runs");
                    let n = runs.entry((step.key.clone(), step.seq)).or_default();
                    *n += 1;
                    *n
                };
                // user-3's seventh message fails on its first two runs.
                if step.key == "user-3" && step.seq == 7 && run <= 2 {
                    return Err(HandlerError::retryable("downstream hiccup"));
                }
                recorder.start("a");
                recorder.succeeded(&step);
                Ok(())
            }
        }
    };
    let retry =
        OrderedRetry::default().backoff(Duration::from_millis(20), Duration::from_millis(100));
    let a = Instance::start(&broker, &p, "a", 4, retry, handler);

    publish_streams(&broker, &p, 6, 30).await;
    let done = common::eventually(Duration::from_secs(60), || async {
        recorder.complete(6, 30)
    })
    .await;

    assert!(recorder.faults().is_empty(), "{:?}", recorder.faults());
    assert!(done, "every key complete");
    assert_eq!(runs.lock().expect("runs")[&("user-3".to_owned(), 7)], 3);
    assert_eq!(recorder.duplicates(), 0);
    let dead: u64 = a.consumers.iter().map(|c| c.metrics().dead_lettered).sum();
    assert_eq!(dead, 0, "nothing was dead-lettered");
    a.stop().await;
    cleanup.cleanup().await;
}

/// Every run: key, seq, and whether it succeeded, in the order they ended.
type Runs = Arc<Mutex<Vec<(String, u32, bool)>>>;

/// A handler in which user-2's fourth message always fails.
fn failing_fourth(runs: &Runs) -> impl rabbitry::Handler + Clone + use<> {
    let runs = runs.clone();
    move |d: Delivery| {
        let runs = runs.clone();
        async move {
            let step: Step = d.json().map_err(HandlerError::decode)?;
            let fails = step.key == "user-2" && step.seq == 4;
            runs.lock()
                .expect("runs")
                .push((step.key, step.seq, !fails));
            if fails {
                return Err(HandlerError::retryable("always fails"));
            }
            Ok(())
        }
    }
}

fn succeeded(runs: &Runs, key: &str) -> Vec<u32> {
    let runs = runs.lock().expect("runs");
    runs.iter()
        .filter(|(k, _, ok)| k == key && *ok)
        .map(|(_, s, _)| *s)
        .collect()
}

fn failed_runs(runs: &Runs) -> usize {
    runs.lock()
        .expect("runs")
        .iter()
        .filter(|(_, _, ok)| !ok)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exhausted_message_is_dead_lettered_after_its_attempts_and_its_key_moves_on() {
    let broker = common::broker().await;
    let (p, mut cleanup) = partitions(&broker, 1, Route::Jump).await;
    let runs: Runs = Arc::default();
    let retry = OrderedRetry::default()
        .attempts(3)
        .backoff(Duration::from_millis(10), Duration::from_millis(50));
    let a = Instance::start(&broker, &p, "a", 4, retry, failing_fourth(&runs));

    publish_streams(&broker, &p, 4, 10).await;
    let done = common::eventually(Duration::from_secs(30), || async {
        (0..4).all(|k| succeeded(&runs, &format!("user-{k}")).last() == Some(&10))
    })
    .await;
    assert!(done, "every key reached its last message");

    assert_eq!(succeeded(&runs, "user-2"), [1, 2, 3, 5, 6, 7, 8, 9, 10]);
    assert_eq!(succeeded(&runs, "user-1"), (1..=10).collect::<Vec<_>>());
    assert_eq!(failed_runs(&runs), 3, "three attempts, in place");
    {
        // The fifth ran only after the fourth's last attempt.
        let runs = runs.lock().expect("runs");
        let pos = |seq, ok| {
            runs.iter()
                .rposition(|r| r.0 == "user-2" && r.1 == seq && r.2 == ok)
        };
        assert!(pos(5, true) > pos(4, false));
    }
    let dead = common::collect(
        &format!("{}.dlq", p.queue_name(0)),
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        common::header_text(&dead[0], "x-exception-message"),
        "always fails"
    );
    a.stop().await;
    cleanup.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_stop_an_exhausted_message_holds_its_key_while_other_keys_go_on() {
    let broker = common::broker().await;
    let (p, mut cleanup) = partitions(&broker, 1, Route::Jump).await;
    let runs: Runs = Arc::default();
    let retry = OrderedRetry::default()
        .attempts(2)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .when_exhausted(rabbitry::WhenExhausted::Stop);
    let a = Instance::start(&broker, &p, "a", 4, retry, failing_fourth(&runs));

    publish_streams(&broker, &p, 4, 10).await;
    let others_done = common::eventually(Duration::from_secs(30), || async {
        [0, 1, 3]
            .iter()
            .all(|k| succeeded(&runs, &format!("user-{k}")).last() == Some(&10))
            && failed_runs(&runs) >= 6
    })
    .await;
    assert!(
        others_done,
        "the other keys finished while user-2 kept retrying"
    );
    assert_eq!(
        succeeded(&runs, "user-2"),
        [1, 2, 3],
        "nothing after the stuck message ran"
    );
    let dlq = format!("{}.dlq", p.queue_name(0));
    assert_eq!(broker.queue_stats(&dlq).await.expect("stats").messages, 0);
    let dead: u64 = a.consumers.iter().map(|c| c.metrics().dead_lettered).sum();
    assert_eq!(dead, 0);
    a.stop().await;
    cleanup.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_shutdown_no_later_message_of_a_key_starts_while_its_head_runs() {
    let broker = common::broker().await;
    let (p, mut cleanup) = partitions(&broker, 1, Route::Jump).await;
    let recorder = Recorder::default();
    let started: Arc<Mutex<Vec<u32>>> = Arc::default();
    let handler = {
        let (recorder, started) = (recorder.clone(), started.clone());
        move |d: Delivery| {
            let (recorder, started) = (recorder.clone(), started.clone());
            async move {
                let step: Step = d.json().map_err(HandlerError::decode)?;
                started.lock().expect("started").push(step.seq);
                recorder.enter("a", &step.key);
                // The head outlasts the start of the shutdown, not its timeout.
                if step.seq == 1 {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
                recorder.exit("a", &step.key);
                Ok(())
            }
        }
    };
    let a = Instance::start(&broker, &p, "a", 4, OrderedRetry::default(), handler);
    publish_streams(&broker, &p, 1, 6).await;
    let head_runs = common::eventually(Duration::from_secs(30), || async {
        !started.lock().expect("started").is_empty()
    })
    .await;
    assert!(head_runs, "the key's head started");
    a.stop().await;
    assert!(recorder.faults().is_empty(), "{:?}", recorder.faults());
    assert_eq!(
        *started.lock().expect("started"),
        vec![1],
        "only the head ran: the rest were given back unstarted"
    );
    cleanup.cleanup().await;
}

#[test]
fn the_recorder_faults_a_success_out_of_order_and_counts_a_repeat() {
    let step = |seq| Step {
        key: "k".into(),
        seq,
    };
    // 1 starts and is given back; 2 succeeds before 1 does.
    let r = Recorder::default();
    r.start("a");
    r.succeeded(&step(2));
    assert_eq!(r.faults().len(), 1, "{:?}", r.faults());
    let r = Recorder::default();
    r.succeeded(&step(1));
    r.succeeded(&step(1));
    r.succeeded(&step(2));
    assert!(r.faults().is_empty(), "{:?}", r.faults());
    assert_eq!(r.duplicates(), 1);
}
