//! Prometheus metrics, one registry per server, rendered at `GET /metrics`. Ours are named
//! `eventstore_…` in base units; the process's own are the standard `process_…`.

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Request latencies, 250 µs to 2 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
    2.048,
];

/// The server's metrics.
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
    /// Each consumer group's events after its acknowledged positions, refreshed at every scrape.
    pub group_lag_events: IntGaugeVec,
    /// The same per partition.
    pub group_partition_lag_events: IntGaugeVec,
    /// Each group's parked events.
    pub group_parked_events: IntGaugeVec,
    /// Each group's connected members (holding a lease).
    pub group_members: IntGaugeVec,
    /// Changes of who owns a group's partitions made through this server.
    pub group_rebalances_total: IntCounterVec,
    /// HTTP requests by route template (never a stream name), method and status.
    pub http_requests_total: IntCounterVec,
    /// HTTP requests by route template, received to response headers.
    pub http_request_duration_seconds: HistogramVec,
    /// Storage connections by state (`in_use`, `idle`, `max`), refreshed at every scrape.
    pub storage_pool_connections: IntGaugeVec,
    /// Storage failures by kind (`sqlite`, `postgres`, `pool`, …).
    pub storage_errors_total: IntCounterVec,
    /// Streams deleted here, by kind (`soft`, `hard`).
    pub streams_deleted_total: IntCounterVec,
    /// Event rows the scavenger removed.
    pub scavenged_events_total: IntCounter,
    /// Scavenger passes, start to end.
    pub scavenge_pass_duration_seconds: Histogram,
    /// Removable events the scavenger has not removed yet, as of its current or last pass.
    pub scavenge_pending_events: IntGauge,
    /// Data subjects erased here (their keys destroyed).
    pub data_subjects_erased_total: IntCounter,
    /// Standbys streaming from the primary, refreshed at every scrape (PostgreSQL only).
    pub replication_standbys: IntGaugeVec,
    /// 1 while the read replica answers, 0 while not (only with a read replica).
    pub replica_up: IntGaugeVec,
    /// Time since the last commit the read replica replayed was made, when it is behind.
    pub replica_lag_seconds: GaugeVec,
    /// Positions the read replica is behind the primary's head.
    pub replica_lag_positions: IntGaugeVec,
}

impl Metrics {
    /// Creates and registers every metric, and the process collector.
    ///
    /// # Errors
    /// Only if two metrics share a name, which is a bug.
    pub fn new() -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        let metrics = Self {
            appends_total: counter_vec(
                &r,
                "eventstore_appends_total",
                "Append requests by result",
                &["result"],
            )?,
            events_appended_total: counter(
                &r,
                "eventstore_events_appended_total",
                "Events written",
            )?,
            append_duration_seconds: histogram(
                &r,
                "eventstore_append_duration_seconds",
                "Append requests, received to answered",
                LATENCY_BUCKETS,
            )?,
            commit_duration_seconds: histogram(
                &r,
                "eventstore_commit_duration_seconds",
                "Group commits, start to durable",
                LATENCY_BUCKETS,
            )?,
            commit_requests: histogram(
                &r,
                "eventstore_commit_requests",
                "Append requests per group commit",
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
            )?,
            head_position: gauge(&r, "eventstore_head_position", "Last position committed here")?,
            subscriptions_active: gauge(
                &r,
                "eventstore_subscriptions_active",
                "Open subscriptions",
            )?,
            subscription_events_sent_total: counter(
                &r,
                "eventstore_subscription_events_sent_total",
                "Events sent to subscribers",
            )?,
            subscription_catchup_fallbacks_total: counter(
                &r,
                "eventstore_subscription_catchup_fallbacks_total",
                "Subscribers that fell behind the broadcast and read storage again",
            )?,
            consumer_position: gauge_vec(
                &r,
                "eventstore_consumer_position",
                "Position each consumer reported",
                &["consumer"],
            )?,
            consumer_lag_events: gauge_vec(
                &r,
                "eventstore_consumer_lag_events",
                "Events beyond each consumer's position",
                &["consumer"],
            )?,
            group_lag_events: gauge_vec(
                &r,
                "eventstore_group_lag_events",
                "Events of each consumer group's filter after its acknowledged positions",
                &["group"],
            )?,
            group_partition_lag_events: gauge_vec(
                &r,
                "eventstore_group_partition_lag_events",
                "Events of each group partition after its acknowledged position",
                &["group", "partition"],
            )?,
            group_parked_events: gauge_vec(
                &r,
                "eventstore_group_parked_events",
                "Events each consumer group parked",
                &["group"],
            )?,
            group_members: gauge_vec(
                &r,
                "eventstore_group_members",
                "Members connected to each consumer group",
                &["group"],
            )?,
            group_rebalances_total: counter_vec(
                &r,
                "eventstore_group_rebalances_total",
                "Changes of partition ownership made through this server",
                &["group"],
            )?,
            http_requests_total: counter_vec(
                &r,
                "eventstore_http_requests_total",
                "HTTP requests by route, method and status",
                &["route", "method", "status"],
            )?,
            http_request_duration_seconds: registered(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "eventstore_http_request_duration_seconds",
                        "HTTP requests, received to response headers",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["route"],
                )?,
            )?,
            storage_pool_connections: gauge_vec(
                &r,
                "eventstore_storage_pool_connections",
                "Storage connections by state",
                &["state"],
            )?,
            storage_errors_total: counter_vec(
                &r,
                "eventstore_storage_errors_total",
                "Storage failures by kind",
                &["kind"],
            )?,
            streams_deleted_total: counter_vec(
                &r,
                "eventstore_streams_deleted_total",
                "Streams deleted, by kind",
                &["kind"],
            )?,
            data_subjects_erased_total: counter(
                &r,
                "eventstore_data_subjects_erased_total",
                "Data subjects erased: their keys destroyed",
            )?,
            scavenged_events_total: counter(
                &r,
                "eventstore_scavenged_events_total",
                "Event rows the scavenger removed",
            )?,
            scavenge_pass_duration_seconds: histogram(
                &r,
                "eventstore_scavenge_pass_duration_seconds",
                "Scavenger passes, start to end",
                &[0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0],
            )?,
            scavenge_pending_events: gauge(
                &r,
                "eventstore_scavenge_pending_events",
                "Removable events not removed yet (for max_age, at most this many)",
            )?,
            // Without labels, and without a value until set: a store without replication
            // shows none of them, rather than a 0 that reads as "caught up".
            replication_standbys: gauge_vec(
                &r,
                "eventstore_replication_standbys",
                "Standbys streaming from the primary",
                &[],
            )?,
            replica_up: gauge_vec(
                &r,
                "eventstore_replica_up",
                "Whether the read replica answers",
                &[],
            )?,
            replica_lag_seconds: registered(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "eventstore_replica_lag_seconds",
                        "Age of the last commit the read replica replayed, while it is behind",
                    ),
                    &[],
                )?,
            )?,
            replica_lag_positions: gauge_vec(
                &r,
                "eventstore_replica_lag_positions",
                "Positions the read replica is behind the primary",
                &[],
            )?,
            registry: r,
        };
        // Known label values start at 0, so that rates and alerts see them before the first
        // event of their kind.
        for result in ["created", "idempotent", "conflict", "rejected"] {
            metrics.appends_total.with_label_values(&[result]);
        }
        for kind in crate::store::Error::KINDS {
            metrics.storage_errors_total.with_label_values(&[kind]);
        }
        for kind in ["soft", "hard"] {
            metrics.streams_deleted_total.with_label_values(&[kind]);
        }
        Ok(metrics)
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        self.render_consumers(|_| true, |_| true)
    }

    /// The text exposition, without the series of consumers `shown` and of groups
    /// `group_shown` leaves out (what a
    /// scoped token may not see).
    pub fn render_consumers(
        &self,
        shown: impl Fn(&str) -> bool,
        group_shown: impl Fn(&str) -> bool,
    ) -> String {
        let mut families = self.registry.gather();
        for family in &mut families {
            family.mut_metric().retain(|metric| {
                metric.get_label().iter().all(|label| match label.name() {
                    "consumer" => shown(label.value()),
                    "group" => group_shown(label.value()),
                    _ => true,
                })
            });
        }
        families.retain(|family| !family.get_metric().is_empty());
        let mut text = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&families, &mut text);
        String::from_utf8(text).unwrap_or_default()
    }
}

/// Registers `collector` with `registry` and hands it back, so that no metric is forgotten.
fn registered<C: Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> Result<C, prometheus::Error> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    registered(r, IntCounter::new(name, help)?)
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    registered(r, IntCounterVec::new(Opts::new(name, help), labels)?)
}

fn gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    registered(r, IntGauge::new(name, help)?)
}

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, prometheus::Error> {
    registered(r, IntGaugeVec::new(Opts::new(name, help), labels)?)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
) -> Result<Histogram, prometheus::Error> {
    registered(r, Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?)
}
