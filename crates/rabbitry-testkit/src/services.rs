//! Finds the services the tests need.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::OnceLock;
use std::time::Duration;

/// Where the test services are.
#[derive(Clone, Debug)]
pub struct Services {
    /// The AMQP URL (credentials included: never print it).
    amqp_url: String,
    /// The Redis URL.
    pub redis_url: String,
    /// A Postgres URL for an administrative database (tests create their own).
    database_url: String,
}

impl Services {
    /// The AMQP URL. It holds credentials: do not print it.
    pub fn amqp_url(&self) -> &str {
        &self.amqp_url
    }
    /// The broker's `host:port`, e.g. to put a [`FaultProxy`](crate::FaultProxy) in front of it.
    pub fn amqp_addr(&self) -> String {
        host_port(&self.amqp_url)
    }
    /// The AMQP URL with another host and port (a proxy's), credentials kept.
    pub fn amqp_url_via(&self, host: &str, port: u16) -> String {
        let mut url = url::Url::parse(&self.amqp_url).expect("AMQP_URL is a URL");
        let _ = url.set_host(Some(host));
        let _ = url.set_port(Some(port));
        url.to_string()
    }
    /// The administrative Postgres URL. It may hold credentials: do not print it.
    pub fn database_url(&self) -> &str {
        &self.database_url
    }
}

const LOCAL_AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const LOCAL_REDIS: &str = "redis://127.0.0.1:6379";
const LOCAL_DATABASE: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The services, found once per test process.
///
/// # Panics
/// When a service is neither configured, nor running locally, nor
/// startable with testcontainers: the message says how to provide it.
pub fn services() -> &'static Services {
    static SERVICES: OnceLock<Services> = OnceLock::new();
    SERVICES.get_or_init(|| Services {
        amqp_url: find("AMQP_URL", LOCAL_AMQP, "RabbitMQ"),
        redis_url: find("REDIS_URL", LOCAL_REDIS, "Redis"),
        database_url: find("DATABASE_URL", LOCAL_DATABASE, "PostgreSQL"),
    })
}

fn find(var: &str, local: &str, what: &str) -> String {
    if let Ok(url) = std::env::var(var)
        && !url.trim().is_empty()
    {
        return url;
    }
    if reachable(local) {
        return local.to_owned();
    }
    if let Some(url) = containers::start(what) {
        return url;
    }
    panic!(
        "rabbitry tests need {what}, and found none: {var} is unset and nothing answers at {}.\n\
         Provide it in one of three ways:\n\
         - set {var} to a running {what};\n\
         - run `docker compose up -d` at the repository root (starts RabbitMQ, Redis and Postgres on the default ports);\n\
         - build the tests with `--features rabbitry-testkit/containers` on a machine with Docker.",
        host_port(local)
    )
}

fn host_port(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| {
            Some(format!(
                "{}:{}",
                u.host_str()?,
                u.port_or_known_default().unwrap_or(0)
            ))
        })
        .unwrap_or_default()
}

fn reachable(url: &str) -> bool {
    let Ok(addrs) = host_port(url).to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a| TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok())
}

#[cfg(not(feature = "containers"))]
mod containers {
    pub(super) fn start(_what: &str) -> Option<String> {
        None
    }
}

#[cfg(feature = "containers")]
mod containers {
    //! Starts a container per service and keeps it for the process's life.
    use std::any::Any;
    use std::sync::Mutex;

    use testcontainers_modules::testcontainers::runners::SyncRunner;
    use testcontainers_modules::{postgres::Postgres, rabbitmq::RabbitMq, redis::Redis};

    pub(super) fn start(what: &str) -> Option<String> {
        let url = match what {
            "RabbitMQ" => {
                let c = RabbitMq::default().start().ok()?;
                let port = c.get_host_port_ipv4(5672).ok()?;
                keep(c);
                format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
            }
            "Redis" => {
                let c = Redis::default().start().ok()?;
                let port = c.get_host_port_ipv4(6379).ok()?;
                keep(c);
                format!("redis://127.0.0.1:{port}")
            }
            _ => {
                let c = Postgres::default().start().ok()?;
                let port = c.get_host_port_ipv4(5432).ok()?;
                keep(c);
                format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres")
            }
        };
        Some(url)
    }

    fn keep(container: impl Any + Send) {
        static KEEP: Mutex<Vec<Box<dyn Any + Send>>> = Mutex::new(Vec::new());
        KEEP.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(container));
    }
}
