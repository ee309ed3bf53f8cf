//! Order timeouts with delayed messages: an order is created, a timeout is
//! scheduled, and when the timeout fires the order is cancelled unless it
//! was paid first.
//!
//! A delayed message cannot be cancelled once published, so the payment
//! does not try to: the timeout handler checks the order's state when the
//! message arrives and does nothing if it was paid. Needs RabbitMQ (the
//! local default, or `AMQP_URL`):
//!
//! ```sh
//! cargo run --example order_timeout
//! ```

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rabbitry::{
    Broker, BrokerConfig, Consumer, Delays, Delivery, Message, Publisher, Queue, Topology,
    consumer_json,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

const TIMEOUTS: &str = "order-timeout.timeouts";
/// The payment window every order gets.
const PAYMENT_WINDOW: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, PartialEq)]
enum OrderState {
    AwaitingPayment,
    Paid,
    Cancelled,
}

#[derive(Debug, Serialize, Deserialize)]
struct PaymentTimeout {
    order: u64,
}

/// Stands for the order table of the service's database.
type Orders = Arc<Mutex<HashMap<u64, OrderState>>>;

#[tokio::main]
async fn main() -> rabbitry::Result<ExitCode> {
    support::init_logging();
    let amqp = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let broker = Broker::connect(
        BrokerConfig::builder()
            .endpoint(&amqp)
            .connection_name("rabbitry-order-timeout")
            .build()?,
    )
    .await?;
    broker
        .declare(&Topology::new().queue(Queue::new(TIMEOUTS)))
        .await?;

    // The payment window is a fixed delay: a queue of its own, exact to the
    // millisecond. Other delays go through the cascade (4 levels here: up
    // to 15 s), in whole seconds, never early.
    let delays = Delays::builder(Publisher::builder(broker.clone()).build()?)
        .prefix("order-timeout.delay")
        .levels(4)
        .fixed(PAYMENT_WINDOW)
        .build()
        .await?;
    println!(
        "delays ready: {:?} for other delays, up to {:?}",
        delays.strategy(),
        delays.max_delay()
    );

    // The timeout handler: cancel the order unless it was paid meanwhile.
    let orders: Orders = Arc::default();
    let started = Instant::now();
    let fired = Arc::new(Mutex::new(0));
    let shutdown = CancellationToken::new();
    let consumer = Consumer::builder(broker.clone(), TIMEOUTS)
        .name("order-timeouts")
        .build()?;
    let worker = consumer.spawn(
        consumer_json({
            let (orders, fired) = (orders.clone(), fired.clone());
            move |t: PaymentTimeout, _: Delivery| {
                let (orders, fired) = (orders.clone(), fired.clone());
                async move {
                    let mut orders = orders.lock().expect("orders");
                    let state = orders.get_mut(&t.order).expect("known order");
                    let at = started.elapsed().as_secs_f32();
                    if *state == OrderState::AwaitingPayment {
                        *state = OrderState::Cancelled;
                        println!("{at:5.1} s  order {}: not paid in time, cancelled", t.order);
                    } else {
                        println!("{at:5.1} s  order {}: timeout fired, but it is {state:?}: nothing to do", t.order);
                    }
                    *fired.lock().expect("count") += 1;
                    Ok(())
                }
            }
        }),
        shutdown.clone(),
    );

    // Orders 1 and 2 get the payment window; order 3 must be paid by a time
    // of day (the cascade, at a SystemTime).
    for order in [1, 2, 3] {
        orders
            .lock()
            .expect("orders")
            .insert(order, OrderState::AwaitingPayment);
        let timeout = Message::json("", TIMEOUTS, &PaymentTimeout { order })?;
        let outcome = match order {
            3 => {
                delays
                    .publish_at(timeout, SystemTime::now() + Duration::from_secs(5))
                    .await?
            }
            _ => delays.publish_after(timeout, PAYMENT_WINDOW).await?,
        };
        let due = if order == 3 { "in 5 s" } else { "in 3 s" };
        println!(
            "{:5.1} s  order {order}: created, payment timeout due {due} ({})",
            started.elapsed().as_secs_f32(),
            if outcome.is_confirmed() {
                "confirmed"
            } else {
                "deferred to the outbox"
            }
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    orders.lock().expect("orders").insert(2, OrderState::Paid);
    println!("{:5.1} s  order 2: paid", started.elapsed().as_secs_f32());

    let deadline = Instant::now() + Duration::from_secs(30);
    while *fired.lock().expect("count") < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    worker.await??;
    let orders = orders.lock().expect("orders").clone();
    let mut summary: Vec<_> = orders.into_iter().collect();
    summary.sort_by_key(|(id, _)| *id);
    println!("final states: {summary:?}");
    let expected = [
        (1, OrderState::Cancelled),
        (2, OrderState::Paid),
        (3, OrderState::Cancelled),
    ];
    broker.close().await;
    if summary != expected {
        eprintln!("expected {expected:?}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
