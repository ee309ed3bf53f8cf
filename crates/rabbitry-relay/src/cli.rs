//! Command-line interface.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// rabbitry-relay: publishes rabbitry's Postgres outbox to RabbitMQ with
/// publisher confirms, and lets an operator inspect and replay dead rows.
#[derive(Debug, Parser)]
#[command(name = "rabbitry-relay", version, about, long_about = None)]
pub(crate) struct Cli {
    /// Postgres URL of the database holding the outbox.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub(crate) database_url: Option<String>,

    /// AMQP URL(s), comma-separated, one per cluster node. Falls back to
    /// AMQP_URL.
    #[arg(long, env = "RABBITRY_AMQP_URL", hide_env_values = true, global = true)]
    pub(crate) amqp_url: Option<String>,

    /// Log format.
    #[arg(long, env = "RABBITRY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub(crate) log_format: LogFormat,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the worker: claim due rows, publish them with confirms, delete
    /// the confirmed ones. Stops cleanly on SIGTERM or ctrl-c.
    Run(RunArgs),
    /// Apply the outbox migrations.
    Migrate,
    /// Show outbox depth, oldest pending age, counts by status, and why
    /// rows are pending (grouped by the kind of their last failure).
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Inspect rows waiting to be published.
    #[command(subcommand)]
    Pending(PendingCommand),
    /// Inspect, replay or purge rows parked as dead.
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Inspect, replay or purge the messages a consumer gave up on (an
    /// error queue such as `orders.dlq`).
    #[command(subcommand)]
    Errors(ErrorsCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum ErrorsCommand {
    /// List messages with their failure headers, oldest first, without
    /// removing or reordering them (each listing counts as a delivery in
    /// the queue's x-delivery-count up to RabbitMQ 4.2: see
    /// docs/operating.md).
    List {
        /// The error queue.
        #[arg(long)]
        queue: String,
        /// At most this many messages.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Skip this many matching messages first.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Start after the message with this id (the last one of the
        /// previous page).
        #[arg(long)]
        after: Option<String>,
        #[command(flatten)]
        filter: ErrorFilterArgs,
        /// Read at most this many messages from the head of the queue
        /// (at most 65535).
        #[arg(long, default_value_t = 10_000)]
        scan: usize,
        /// Print JSON lines instead of text (the totals go to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Republish messages to their original exchange and routing key.
    Replay {
        /// The error queue.
        #[arg(long)]
        queue: String,
        /// Read at most this many messages (default: all).
        #[arg(long)]
        limit: Option<usize>,
        /// Replay only what matches; the rest stays in the queue.
        #[command(flatten)]
        filter: ErrorFilterArgs,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
    /// Delete every message in the error queue.
    Purge {
        /// The error queue.
        #[arg(long)]
        queue: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Address of the health and Prometheus metrics endpoint (/healthz,
    /// /readyz, /metrics).
    #[arg(long, env = "RABBITRY_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub(crate) metrics_addr: SocketAddr,

    /// Rows claimed per batch.
    #[arg(long, env = "RABBITRY_BATCH_SIZE", default_value_t = 500)]
    pub(crate) batch_size: i64,

    /// How often an idle worker looks for due rows, in milliseconds.
    #[arg(long, env = "RABBITRY_POLL_INTERVAL_MS", default_value_t = 200)]
    pub(crate) poll_interval_ms: u64,

    /// Failed attempts after which a row is parked as dead.
    #[arg(long, env = "RABBITRY_MAX_ATTEMPTS", default_value_t = 10)]
    pub(crate) max_attempts: i32,

    /// First retry delay of a failed row, in milliseconds (doubles, with jitter).
    #[arg(long, env = "RABBITRY_BACKOFF_BASE_MS", default_value_t = 1000)]
    pub(crate) backoff_base_ms: u64,

    /// Longest retry delay of a failed row, in milliseconds.
    #[arg(long, env = "RABBITRY_BACKOFF_MAX_MS", default_value_t = 300_000)]
    pub(crate) backoff_max_ms: u64,

    /// Batches in flight at once, each in its own transaction.
    #[arg(long, env = "RABBITRY_RELAY_CONCURRENCY", default_value_t = 4)]
    pub(crate) concurrency: usize,

    /// Keep order per partition key.
    #[arg(long, env = "RABBITRY_ORDERED")]
    pub(crate) ordered: bool,

    /// Do not LISTEN for wake-ups (OutboxStore::wake, dead-row replay);
    /// poll only.
    #[arg(long)]
    pub(crate) no_listen: bool,

    /// Confirm timeout per message, in milliseconds.
    #[arg(long, env = "RABBITRY_PUBLISH_TIMEOUT_MS", default_value_t = 10_000)]
    pub(crate) publish_timeout_ms: u64,

    /// Confirm-mode channels used for publishing.
    #[arg(long, env = "RABBITRY_CHANNELS", default_value_t = 4)]
    pub(crate) channels: usize,

    /// On shutdown, how long the batch in hand may take, in milliseconds.
    #[arg(long, env = "RABBITRY_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub(crate) shutdown_grace_ms: u64,

    /// Postgres `statement_timeout` on the relay's sessions, in milliseconds.
    #[arg(
        long,
        env = "RABBITRY_PG_STATEMENT_TIMEOUT_MS",
        default_value_t = 15_000
    )]
    pub(crate) pg_statement_timeout_ms: u64,

    /// Client-side bound on each Postgres step of a batch (claim, settle),
    /// in milliseconds; on expiry the connection is closed and the batch
    /// retried.
    #[arg(long, env = "RABBITRY_PG_CALL_TIMEOUT_MS", default_value_t = 20_000)]
    pub(crate) pg_call_timeout_ms: u64,

    /// Postgres `idle_in_transaction_session_timeout` on the relay's
    /// sessions, in milliseconds: the server ends a batch whose relay went
    /// silent, freeing its rows. Must exceed the publish timeout.
    #[arg(
        long,
        env = "RABBITRY_PG_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        default_value_t = 60_000
    )]
    pub(crate) pg_idle_in_transaction_timeout_ms: u64,

    /// Connection name shown in the RabbitMQ management UI.
    #[arg(
        long,
        env = "RABBITRY_CONNECTION_NAME",
        default_value = "rabbitry-relay"
    )]
    pub(crate) connection_name: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PendingCommand {
    /// List pending rows, oldest first, with their last failure.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many rows.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeadCommand {
    /// List dead rows.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many rows.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put dead rows back to pending, with fresh attempts.
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
    /// Delete dead rows.
    Purge {
        #[command(flatten)]
        filter: FilterArgs,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
}

#[derive(Clone, Debug, Args)]
pub(crate) struct FilterArgs {
    /// Only rows for this exchange.
    #[arg(long)]
    pub(crate) exchange: Option<String>,
    /// Only rows with this routing key.
    #[arg(long)]
    pub(crate) routing_key: Option<String>,
    /// Only rows whose last error contains this text.
    #[arg(long)]
    pub(crate) error_contains: Option<String>,
}

#[derive(Clone, Debug, Args)]
pub(crate) struct ErrorFilterArgs {
    /// Only this failure kind (retryable, permanent, decode) or broker
    /// reason (rejected, expired, maxlen, delivery_limit).
    #[arg(long)]
    pub(crate) reason: Option<String>,
    /// Only messages whose handler error contains this text
    /// (case-insensitive), e.g. an exception type.
    #[arg(long)]
    pub(crate) exception: Option<String>,
    /// Only messages first published with this routing key.
    #[arg(long)]
    pub(crate) routing_key: Option<String>,
}
