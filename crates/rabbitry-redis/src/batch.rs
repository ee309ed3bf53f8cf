//! Claims and completions of concurrent deliveries, sent to Redis together.
//!
//! Every delivery needs a claim and then a `done` marker. Sent one by one,
//! each is a command of its own to encode, run (a Lua call in Redis) and
//! parse. Here one task per kind takes what is waiting, sends it as one
//! script over all those keys, and answers each caller. While the batches
//! allowed in flight ([`IN_FLIGHT`]) are out, the next one fills, so a lone
//! delivery waits no longer than one round trip, and a busy consumer sends
//! tens of keys per round trip.

use std::sync::Arc;
use std::time::Duration;

use rabbitry_core::StoreError;
use redis::Script;
use redis::aio::ConnectionManager;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// The most keys in one script call.
const MAX_BATCH: usize = 256;
/// Script calls of one kind in flight at once on the multiplexed
/// connection. One measured best in `rabbitry-bench consume-idempotent` on
/// 2 cores (more in flight made smaller batches and cost more CPU).
const IN_FLIGHT: usize = 1;

struct Request {
    key: String,
    token: String,
    ms: u64,
    reply: oneshot::Sender<Result<i64, StoreError>>,
}

/// The sending side of one batching task. The task ends when every clone
/// of the store (and so this sender) is dropped.
pub(crate) struct Batcher {
    tx: mpsc::UnboundedSender<Request>,
}

impl Batcher {
    /// Spawns the task on the current tokio runtime.
    pub(crate) fn spawn(
        conn: ConnectionManager,
        script: &'static Script,
        bound: Duration,
        operation: &'static str,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(drive(rx, conn, script, bound, operation));
        Self { tx }
    }

    /// Queues one key and waits for its answer (the caller bounds the wait).
    pub(crate) async fn call(&self, key: &str, token: &str, ms: u64) -> Result<i64, StoreError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            key: key.to_owned(),
            token: token.to_owned(),
            ms,
            reply,
        };
        let stopped = || StoreError::unavailable("the Redis store's batching task stopped");
        self.tx.send(request).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn drive(
    mut rx: mpsc::UnboundedReceiver<Request>,
    conn: ConnectionManager,
    script: &'static Script,
    bound: Duration,
    operation: &'static str,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // A slot first: while every slot is busy, requests pile up and the
        // next batch is larger.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let conn = conn.clone();
        tokio::spawn(async move {
            send(batch, conn, script, bound, operation).await;
            drop(slot);
        });
    }
}

async fn send(
    mut batch: Vec<Request>,
    mut conn: ConnectionManager,
    script: &'static Script,
    bound: Duration,
    operation: &'static str,
) {
    let mut call = script.prepare_invoke();
    for r in &batch {
        call.key(&r.key);
    }
    for r in &batch {
        call.arg(&r.token).arg(r.ms);
    }
    let answer = tokio::time::timeout(bound, call.invoke_async::<Vec<i64>>(&mut conn)).await;
    let n = batch.len();
    match answer {
        Ok(Ok(codes)) if codes.len() == n => {
            for (r, code) in batch.drain(..).zip(codes) {
                let _ = r.reply.send(Ok(code));
            }
        }
        Ok(Ok(codes)) => {
            let why = format!("redis answered {} codes for {n} keys", codes.len());
            fail(&mut batch, || StoreError::unavailable(why.clone()));
        }
        Ok(Err(e)) => {
            // Redis's words (never the URL, never a value), one copy each.
            let why = e.to_string();
            fail(&mut batch, || StoreError::unavailable(why.clone()));
        }
        Err(_) => fail(&mut batch, || StoreError::TimedOut {
            operation,
            after: bound,
        }),
    }
}

fn fail(batch: &mut Vec<Request>, error: impl Fn() -> StoreError) {
    for r in batch.drain(..) {
        let _ = r.reply.send(Err(error()));
    }
}
