//! Helpers shared by rabbitry-postgres's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use rabbitry_core::{Broker, BrokerConfig, Endpoint, Queue, Topology};
use rabbitry_postgres::{OutboxStore, OutboxStoreBuilder};
use rabbitry_testkit::{BrokerCleanup, FaultProxy, TestDatabase, services, unique};

/// `host:port` of a URL.
pub fn host_port(url: &str) -> String {
    let url = url::Url::parse(url).expect("a URL");
    format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(5432)
    )
}

/// The same URL through a proxy on 127.0.0.1.
pub fn via(url: &str, proxy: &FaultProxy) -> String {
    let mut url = url::Url::parse(url).expect("a URL");
    let _ = url.set_host(Some("127.0.0.1"));
    let _ = url.set_port(Some(proxy.port()));
    url.to_string()
}

/// A fresh, migrated database and a store connected to it directly.
pub async fn database() -> (TestDatabase, OutboxStore) {
    rabbitry_testkit::init_tracing();
    let db = TestDatabase::create().await;
    let store = OutboxStore::connect(db.url()).await.expect("connect");
    store.migrate().await.expect("migrate");
    (db, store)
}

/// A store reaching `db` through a proxy, with short bounds.
pub async fn proxied_store(
    db: &TestDatabase,
    builder: OutboxStoreBuilder,
) -> (FaultProxy, OutboxStore) {
    let proxy = FaultProxy::start(host_port(db.url())).await;
    let store = builder
        .connect(&via(db.url(), &proxy))
        .await
        .expect("connect through the proxy");
    (proxy, store)
}

/// A broker connected directly.
pub async fn broker() -> Broker {
    Broker::connect(
        BrokerConfig::builder()
            .endpoint(services().amqp_url())
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("config"),
    )
    .await
    .expect("connect to the test broker")
}

/// A broker reached through `proxy`, with short bounds.
pub fn proxied_broker(proxy: &FaultProxy) -> Broker {
    let endpoint = Endpoint::parse(services().amqp_url())
        .expect("url")
        .with_address("127.0.0.1", proxy.port());
    Broker::lazy(
        BrokerConfig::builder()
            .parsed_endpoint(endpoint)
            .connect_timeout(Duration::from_millis(500))
            .build()
            .expect("config"),
    )
    .expect("lazy broker")
}

/// A quorum queue of its own, deleted when the guard drops.
pub async fn queue(broker: &Broker, prefix: &str) -> (String, BrokerCleanup) {
    let name = unique(prefix);
    let mut cleanup = BrokerCleanup::new();
    cleanup.queue(&name);
    broker
        .declare(&Topology::new().queue(Queue::new(&name)))
        .await
        .expect("declare");
    (name, cleanup)
}
