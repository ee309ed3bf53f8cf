//! Claims and completions of concurrent deliveries, sent to Redis together.
//!
//! Every delivery needs a claim and then a `done` marker. Each is one
//! native `SET` (no script: a Lua call costs Redis several times as much,
//! and Redis shares the cores with everything else):
//!
//! - claim: `SET key processing:<token> NX PX <lease> GET`: no old value
//!   means claimed, `done` means handled, anything else is another's lease;
//! - done: `SET key done PX <retention> GET`: the old value says whether
//!   the lease was still ours.
//!
//! One task takes what is waiting, claims and done markers alike, sends it
//! as one pipeline, answers each caller, and goes round again. While a
//! pipeline is out the next one fills, so a lone delivery waits no longer
//! than one round trip, and a busy consumer sends tens of commands per
//! round trip. The task does the round trip itself rather than handing it
//! to another: every hand-over is a trip through the runtime's queue, which
//! under load holds hundreds of handler tasks, and it measured slower in
//! `rabbitry-bench consume-idempotent`. `SET` with both `NX` and `GET` needs
//! Redis 7.0 or later.

use std::time::Duration;

use rabbitry_core::StoreError;
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

/// The most commands in one pipeline.
const MAX_BATCH: usize = 512;

/// Which `SET` a batcher sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `SET key processing:<token> NX PX <lease> GET`.
    Claim,
    /// `SET key done PX <retention> GET`.
    Complete,
}

impl Kind {
    fn operation(self) -> &'static str {
        match self {
            Kind::Claim => "a claim",
            Kind::Complete => "marking done",
        }
    }

    fn command(r: &Request) -> redis::Cmd {
        let mut cmd = redis::cmd("SET");
        cmd.arg(&r.key);
        match r.kind {
            Kind::Claim => cmd.arg(format!("processing:{}", r.token)).arg("NX"),
            Kind::Complete => cmd.arg("done"),
        };
        cmd.arg("PX").arg(r.ms).arg("GET");
        cmd
    }

    /// What the key held before, as the store's answer.
    fn answer(r: &Request, old: Option<&str>) -> Answer {
        let ours = |v: &str| v.strip_prefix("processing:") == Some(r.token.as_str());
        match (r.kind, old) {
            (Kind::Claim, None) => Answer::Claimed,
            (Kind::Claim, Some("done")) => Answer::Done,
            (Kind::Claim, Some(_)) => Answer::Busy,
            // Lapsed unclaimed, or still ours: the work is done either way.
            (Kind::Complete, None) => Answer::Ours,
            (Kind::Complete, Some(v)) if ours(v) => Answer::Ours,
            (Kind::Complete, Some(_)) => Answer::NotOurs,
        }
    }
}

/// One key's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Claim: the key was free and is ours now.
    Claimed,
    /// Claim: the key is marked done.
    Done,
    /// Claim: another consumer holds a live lease.
    Busy,
    /// Done: the key is marked; it was ours (or had lapsed).
    Ours,
    /// Done: the key is marked, but another consumer held it (its lease
    /// ended and another claimed it; the work is done, so `done` is true).
    NotOurs,
}

struct Request {
    kind: Kind,
    key: String,
    token: String,
    ms: u64,
    reply: oneshot::Sender<Result<Answer, StoreError>>,
}

/// The sending side of the batching task. The task ends when every clone
/// of the store (and so this sender) is dropped.
pub(crate) struct Batcher {
    tx: mpsc::UnboundedSender<Request>,
}

impl Batcher {
    /// Spawns the task on the current tokio runtime.
    pub(crate) fn spawn(conn: ConnectionManager, bound: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(drive(rx, conn, bound));
        Self { tx }
    }

    /// Queues one key and waits for its answer (the caller bounds the wait).
    pub(crate) async fn call(
        &self,
        kind: Kind,
        key: &str,
        token: &str,
        ms: u64,
    ) -> Result<Answer, StoreError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            kind,
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

async fn drive(mut rx: mpsc::UnboundedReceiver<Request>, conn: ConnectionManager, bound: Duration) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        send(&mut batch, conn.clone(), bound).await;
    }
}

/// Sends `batch` as one pipeline and answers (and so empties) it.
async fn send(batch: &mut Vec<Request>, mut conn: ConnectionManager, bound: Duration) {
    let mut pipe = redis::pipe();
    for r in batch.iter() {
        pipe.add_command(Kind::command(r));
    }
    let answer =
        tokio::time::timeout(bound, pipe.query_async::<Vec<Option<String>>>(&mut conn)).await;
    let n = batch.len();
    match answer {
        Ok(Ok(olds)) if olds.len() == n => {
            for (r, old) in batch.drain(..).zip(olds) {
                let answer = Kind::answer(&r, old.as_deref());
                let _ = r.reply.send(Ok(answer));
            }
        }
        Ok(Ok(olds)) => {
            let why = format!("redis answered {} values for {n} keys", olds.len());
            fail(batch, |_| StoreError::unavailable(why.clone()));
        }
        Ok(Err(e)) => {
            // Redis's words (never the URL, never a value), one copy each.
            let why = e.to_string();
            fail(batch, |_| StoreError::unavailable(why.clone()));
        }
        Err(_) => fail(batch, |kind| StoreError::TimedOut {
            operation: kind.operation(),
            after: bound,
        }),
    }
}

fn fail(batch: &mut Vec<Request>, error: impl Fn(Kind) -> StoreError) {
    for r in batch.drain(..) {
        let _ = r.reply.send(Err(error(r.kind)));
    }
}
