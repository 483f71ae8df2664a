//! Event benchmark: validated publishing, filtered delivery and the cost of validation
//! and filtering per event, beside a bare lapin publish/consume of the same bytes on
//! the same broker in the same run.
//!
//! Run: `cargo bench -p clacks-tests --bench events`.

use std::time::{Duration, Instant};

use clacks_core::bus::Bus;
use clacks_core::events::{EventPublisher, EventValidator, Filter, envelope};
use clacks_tests::{amqp_bus, amqp_url, unique_domain};
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

fn call(i: usize) -> Vec<u8> {
    let callee = if i.is_multiple_of(2) { "100" } else { "101" };
    envelope(
        "Call",
        &format!("<Type>missed</Type><Id>c{i}</Id><Caller>200</Caller><Callee>{callee}</Callee><Started>2026-11-22T10:00:00Z</Started>"),
    )
    .into_bytes()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let n: usize = std::env::var("CLACKS_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let url = amqp_url();
    let domain = unique_domain();
    let validator = EventValidator::start(&[]).unwrap_or_else(|e| panic!("{e}"));
    let filter = Filter::parse("/Event/Call[Callee = '100']").unwrap_or_else(|e| panic!("{e}"));
    let sample = call(0);

    // Cost per event of each stage on its own.
    let started = Instant::now();
    for _ in 0..n {
        validator.validate(&sample).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let validate_us = started.elapsed().as_secs_f64() * 1e6 / n as f64;
    let compiled = filter.compile().unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    for _ in 0..n {
        assert!(compiled.matches(&sample).unwrap_or(false));
    }
    let filter_us = started.elapsed().as_secs_f64() * 1e6 / n as f64;

    // Clacks: validated publish → RabbitMQ → filtered subscriber (half the events match).
    let publisher_bus = amqp_bus(&url, &domain, "bench publisher").await;
    let subscriber_bus: Bus = amqp_bus(&url, &domain, "bench subscriber").await;
    let publisher = EventPublisher::new(publisher_bus, validator.clone());
    let events = subscriber_bus.subscribe(&["Call".to_owned()]).await.unwrap_or_else(|e| panic!("{e}"));
    let mut filtered = clacks_core::events::filter::filtered(events, filter.clone());
    let started = Instant::now();
    for i in 0..n {
        publisher.publish(&call(i)).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let publish_elapsed = started.elapsed();
    for _ in 0..n / 2 {
        tokio::time::timeout(Duration::from_secs(30), filtered.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("lost events"));
    }
    let end_to_end = started.elapsed();
    // Latency: one matching event at a time.
    let rounds = 2_000;
    let mut latencies = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        publisher.publish(&sample).await.unwrap_or_else(|e| panic!("{e}"));
        tokio::time::timeout(Duration::from_secs(5), filtered.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("lost event"));
        latencies.push(t.elapsed());
    }
    latencies.sort();

    // Floor: bare lapin, the same bytes through a topic exchange, no validation, no filter.
    let connection = Connection::connect(&url, ConnectionProperties::default()).await.unwrap_or_else(|e| panic!("{e}"));
    let channel = connection.create_channel().await.unwrap_or_else(|e| panic!("{e}"));
    let exchange = format!("{}.bare-events", domain.as_str());
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let consumer_channel = connection.create_channel().await.unwrap_or_else(|e| panic!("{e}"));
    let queue = consumer_channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    consumer_channel
        .queue_bind(
            queue.name().clone(),
            exchange.as_str().into(),
            "Call".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut consumer = consumer_channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let publish = |bytes: Vec<u8>| {
        let channel = channel.clone();
        let exchange = exchange.clone();
        async move {
            channel
                .basic_publish(
                    exchange.as_str().into(),
                    "Call".into(),
                    BasicPublishOptions::default(),
                    &bytes,
                    BasicProperties::default(),
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    };
    let started = Instant::now();
    for i in 0..n {
        publish(call(i)).await;
    }
    let bare_publish = started.elapsed();
    for _ in 0..n {
        let _ = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("lost"));
    }
    let bare_end_to_end = started.elapsed();
    let mut bare_latencies = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        publish(sample.clone()).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("lost"));
        bare_latencies.push(t.elapsed());
    }
    bare_latencies.sort();

    let rate = |count: usize, d: Duration| count as f64 / d.as_secs_f64();
    println!();
    println!("Event benchmark: {n} Call events ({} matching the filter), then {rounds} one at a time", n / 2);
    println!("validation per event (libxml2 thread round trip)   {validate_us:>8.1} µs");
    println!("filter per event (xee-xpath)                        {filter_us:>8.1} µs");
    println!("validation + filter per event                       {:>8.1} µs  (goal <= 50)", validate_us + filter_us);
    println!("clacks: validated publish                           {:>8.0} events/s", rate(n, publish_elapsed));
    println!(
        "clacks: end to end, all filtered deliveries in      {:>8.0} events/s published  (goal >= 10,000)",
        rate(n, end_to_end)
    );
    println!("bare lapin: publish                                 {:>8.0} events/s", rate(n, bare_publish));
    println!("bare lapin: end to end                              {:>8.0} events/s", rate(n, bare_end_to_end));
    println!(
        "publish to filtered delivery p50/p99                {:>8.0} / {:.0} µs  (bare lapin {:.0} / {:.0} µs, p50 ratio {:.2}x)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&bare_latencies, 0.5),
        percentile(&bare_latencies, 0.99),
        percentile(&latencies, 0.5) / percentile(&bare_latencies, 0.5)
    );
    println!(
        "end-to-end throughput ratio to bare lapin           {:>8.2}x",
        rate(n, end_to_end) / rate(n, bare_end_to_end)
    );
}
