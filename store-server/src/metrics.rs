//! Prometheus metrics, one registry per server, rendered at `GET /metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The server's metrics. Names carry the `eventstore_` prefix and base units.
pub struct Metrics {
    registry: Registry,
    /// Append requests by result: `created`, `idempotent`, `conflict`, `rejected`.
    pub appends_total: IntCounterVec,
    /// Events written.
    pub events_appended_total: IntCounter,
    /// Append requests, received to answered.
    pub append_duration_seconds: Histogram,
    /// Group commits, queued batch to committed.
    pub commit_duration_seconds: Histogram,
    /// Requests per group commit: how much batching is going on.
    pub commit_requests: Histogram,
    /// The last position this server committed.
    pub head_position: IntGauge,
    /// Open subscriptions.
    pub subscriptions_active: IntGauge,
    /// Events sent to subscribers.
    pub subscription_events_sent_total: IntCounter,
    /// Times a subscriber fell behind the broadcast (or saw a gap) and read storage again.
    pub subscription_catchup_fallbacks_total: IntCounter,
    /// Each consumer's reported position, refreshed at every scrape.
    pub consumer_position: IntGaugeVec,
    /// Each consumer's lag behind the head, refreshed at every scrape.
    pub consumer_lag_events: IntGaugeVec,
}

impl Metrics {
    /// Creates and registers every metric.
    ///
    /// # Errors
    /// Only if two metrics share a name, which is a bug.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("eventstore".into()), None)?;
        let latency = vec![
            0.000_25, 0.000_5, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256,
            0.512, 1.024, 2.048,
        ];
        let metrics = Self {
            appends_total: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new("appends_total", "Append requests by result"),
                    &["result"],
                )?,
            )?,
            events_appended_total: registered(
                &registry,
                IntCounter::new("events_appended_total", "Events written")?,
            )?,
            append_duration_seconds: registered(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "append_duration_seconds",
                        "Append requests, received to answered",
                    )
                    .buckets(latency.clone()),
                )?,
            )?,
            commit_duration_seconds: registered(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "commit_duration_seconds",
                        "Group commits, start to durable",
                    )
                    .buckets(latency),
                )?,
            )?,
            commit_requests: registered(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new("commit_requests", "Append requests per group commit")
                        .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]),
                )?,
            )?,
            head_position: registered(
                &registry,
                IntGauge::new("head_position", "Last position committed here")?,
            )?,
            subscriptions_active: registered(
                &registry,
                IntGauge::new("subscriptions_active", "Open subscriptions")?,
            )?,
            subscription_events_sent_total: registered(
                &registry,
                IntCounter::new("subscription_events_sent_total", "Events sent to subscribers")?,
            )?,
            subscription_catchup_fallbacks_total: registered(
                &registry,
                IntCounter::new(
                    "subscription_catchup_fallbacks_total",
                    "Subscribers that fell behind the broadcast and read storage again",
                )?,
            )?,
            consumer_position: registered(
                &registry,
                IntGaugeVec::new(
                    Opts::new("consumer_position", "Position each consumer reported"),
                    &["consumer"],
                )?,
            )?,
            consumer_lag_events: registered(
                &registry,
                IntGaugeVec::new(
                    Opts::new("consumer_lag_events", "Events beyond each consumer's position"),
                    &["consumer"],
                )?,
            )?,
            registry,
        };
        Ok(metrics)
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut text = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut text);
        String::from_utf8(text).unwrap_or_default()
    }
}

/// Registers `collector` with `registry` and hands it back, so that no metric is forgotten.
fn registered<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> Result<C, prometheus::Error> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}
