//! What every example shares: where the services are, names of its own,
//! a database of its own, and a plain message (not a stack trace) when a
//! service is missing.

#![allow(dead_code, unreachable_pub)] // each example uses a part of it

use std::fmt;
use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use rabbitry::{Broker, BrokerConfig};

pub const AMQP_DEFAULT: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DATABASE_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const REDIS_DEFAULT: &str = "redis://127.0.0.1:6379";

/// A failure the example explains in a line or two, then exits 1.
pub struct Problem(pub String);

impl<E: std::error::Error> From<E> for Problem {
    fn from(e: E) -> Self {
        Problem(e.to_string())
    }
}

impl fmt::Debug for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// rabbitry's own lines at INFO on stderr, beside what the example prints,
/// under the filter rabbitry recommends; `RUST_LOG` overrides it
/// (`RUST_LOG=off` for none), payload-printing targets always off.
pub fn init_logging() {
    let filter = rabbitry::log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // No colour codes in a pipe or a file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs an example's body on a runtime, printing a failure as one message.
pub fn run<F: Future<Output = Result<(), Problem>>>(body: impl FnOnce() -> F) -> ExitCode {
    init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(body()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Problem(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

pub fn amqp_url() -> String {
    env_or("AMQP_URL", AMQP_DEFAULT)
}

pub fn database_url() -> String {
    env_or("DATABASE_URL", DATABASE_DEFAULT)
}

pub fn redis_url() -> String {
    env_or("REDIS_URL", REDIS_DEFAULT)
}

/// `prefix` and a suffix of its own, so runs side by side never meet.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{prefix}-{}", &id[id.len() - 10..])
}

const START_ALL: &str = "start the services with `docker compose up -d`";

/// Connects to RabbitMQ, or says which service is missing and how to
/// start it.
pub async fn broker(connection_name: &str) -> Result<Broker, Problem> {
    let config = BrokerConfig::builder()
        .endpoint(amqp_url())
        .connection_name(connection_name)
        .connect_timeout(Duration::from_secs(5))
        .build()?;
    let shown = config.endpoints()[0].to_string();
    Broker::connect(config).await.map_err(|e| {
        Problem(format!(
            "RabbitMQ is not reachable at {shown} ({e}).\n  \
             {START_ALL} (or `docker compose up -d rabbitmq`), or point AMQP_URL at a broker."
        ))
    })
}

/// A Postgres database of the example's own, dropped by [`OwnDatabase::drop`].
pub struct OwnDatabase {
    admin: sqlx::PgPool,
    name: String,
    url: String,
}

impl OwnDatabase {
    /// Creates a fresh database next to `DATABASE_URL`'s.
    pub async fn create(prefix: &str) -> Result<Self, Problem> {
        let base = database_url();
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&base)
            .await
            .map_err(|e| {
                Problem(format!(
                    "PostgreSQL is not reachable through DATABASE_URL ({e}).\n  \
                     {START_ALL} (or `docker compose up -d postgres`), or set DATABASE_URL."
                ))
            })?;
        let name = unique(prefix).replace('-', "_");
        // A name of ours ([a-z0-9_]), not input: CREATE DATABASE takes no parameters.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await?;
        let url = with_database(&base, &name)?;
        Ok(Self { admin, name, url })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the database (closing its sessions first).
    pub async fn drop(self) -> Result<(), Problem> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&self.admin)
        .await?;
        self.admin.close().await;
        Ok(())
    }
}

/// `base` with its database name replaced by `name` (query kept).
fn with_database(base: &str, name: &str) -> Result<String, Problem> {
    let (head, query) = base
        .split_once('?')
        .map_or((base, None), |(h, q)| (h, Some(q)));
    let scheme_end = head
        .find("://")
        .ok_or_else(|| Problem("DATABASE_URL is not a postgres:// URL".into()))?
        + 3;
    let host_end = head[scheme_end..]
        .find('/')
        .map_or(head.len(), |i| scheme_end + i);
    let mut url = format!("{}/{name}", &head[..host_end]);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    Ok(url)
}
