//! Consumer groups: competing consumers that keep per-stream order (shared/API.md,
//! "Consumer groups").
//!
//! Everything a group knows is stored ([`crate::store::groups`]): its partitions' acknowledged
//! positions and owners, its members' leases. Every change reads the group under its lock
//! (on PostgreSQL the group's row, `FOR UPDATE`, across instances), decides in [`state`]
//! (pure), and writes the difference back. So a partition has at most one owner whichever
//! instance its members connect to: it only moves from a member that released it, left, or
//! whose lease lapsed, and a session stops sending before its lease can lapse (it renews
//! every quarter of the member timeout and gives up at half of it without a renewal).
//!
//! The coordinator is the instance holding the scavenger's advisory lock (the one instance
//! doing background work): it looks at every group each quarter of the member timeout, which
//! frees the partitions of leases that lapsed (a dead instance's members). Members joining
//! and leaving rebalance in the same change, on the instance they are connected to; the
//! lock makes both safe at once, so the coordinator is only the sweeper. Events come from
//! the tailer's broadcast once a member is caught up: one read of each commit per server.

pub mod balance;
mod session;
pub mod state;

pub use session::{Member, REFRESH, serve};

use crate::protocol::{GroupName, Timestamp};
use crate::store::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tracing::warn;

/// `--group-member-timeout-ms` when not given.
pub const MEMBER_TIMEOUT_MS: u64 = 10_000;
/// `--group-inflight-max` when not given.
pub const INFLIGHT_MAX: usize = 1000;

/// How groups run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// A member that does not renew its lease, or has events unacknowledged, for this long
    /// loses its partitions.
    pub member_timeout: Duration,
    /// Most unacknowledged events sent per partition.
    pub inflight_max: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            member_timeout: Duration::from_millis(MEMBER_TIMEOUT_MS),
            inflight_max: INFLIGHT_MAX,
        }
    }
}

/// What this server's sessions of each group are told: something changed here (an ack, a
/// member joined or left), read the state again now rather than at the next refresh.
pub struct Groups {
    changes: Mutex<HashMap<GroupName, watch::Sender<u64>>>,
    rebalances: prometheus::IntCounterVec,
}

impl Groups {
    /// Counting the rebalances made here into `rebalances` (label: the group).
    pub fn new(rebalances: prometheus::IntCounterVec) -> Self {
        Self { changes: Mutex::default(), rebalances }
    }

    /// A change made here moved partitions of `group` (or is about to, once released).
    pub fn rebalanced(&self, group: &GroupName, moved: bool) {
        if moved {
            self.rebalances.with_label_values(&[group.as_str()]).inc();
        }
    }

    /// Tells the sessions of `group` on this server to read its state again.
    pub fn changed(&self, group: &GroupName) {
        let changes = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = changes.get(group) {
            sender.send_modify(|n| *n += 1);
        }
    }

    fn subscribe(&self, group: &GroupName) -> watch::Receiver<u64> {
        let mut changes = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        changes.entry(group.clone()).or_insert_with(|| watch::channel(0).0).subscribe()
    }
}

/// The coordinator's sweep while this server has the turn, every quarter of the member
/// timeout: only a lapsed lease needs it (joins, leaves and releases rebalance in their own
/// change), and a lease lapses at that granularity, so a faster sweep would only read every
/// group more often. Stops when `shutdown` turns true.
pub fn coordinate(
    store: Arc<dyn Store>,
    groups: Arc<Groups>,
    options: Options,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval((options.member_timeout / 4).max(REFRESH));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.wait_for(|stopping| *stopping) => return,
            }
            if let Err(err) = sweep(&*store, &groups).await {
                warn!(cause = %crate::error_chain(&err), "group coordinator cannot rebalance");
            }
        }
    })
}

async fn sweep(store: &dyn Store, groups: &Groups) -> Result<(), crate::store::Error> {
    if !store.scavenger_turn().await? {
        return Ok(());
    }
    let now = Timestamp::now();
    for group in store.groups().await? {
        // Only a lapsed lease needs the sweeper; reading first keeps idle groups read-only.
        if !group.members.values().any(|lease| lease.expires_at < now) && !needs_owner(&group) {
            continue;
        }
        let mut changed = false;
        let mut rebalance = |state: &mut crate::store::groups::GroupState| {
            changed = state.rebalance(Timestamp::now());
        };
        store.change_group(&group.name, &mut rebalance).await?;
        if changed {
            groups.rebalanced(&group.name, true);
            groups.changed(&group.name);
        }
    }
    Ok(())
}

/// Whether a partition is free while members are connected (its owner released it).
fn needs_owner(group: &crate::store::groups::GroupState) -> bool {
    !group.members.is_empty() && group.partitions.iter().any(|p| p.owner.is_none())
}

/// Lags up to this many events are counted event by event; past it, the rest of the
/// distance to the head counts as lag (counting would read that many rows each time).
const LAG_COUNTED_MAX: usize = 100_000;

/// The events of `group`'s filter after its partitions' acknowledged positions, in all and
/// per partition.
///
/// # Errors
/// Storage fails.
pub async fn lag(
    store: &dyn Store,
    group: &crate::store::groups::GroupState,
    head: crate::protocol::Position,
) -> Result<(u64, Vec<u64>), crate::store::Error> {
    use crate::protocol::{Position, partition_of};
    use crate::store::{Direction, Filter, LogQuery};
    let positions: Vec<Position> = group.partitions.iter().map(|p| p.position).collect();
    let mut per_partition = vec![0u64; positions.len()];
    let Some(mut scanned) = positions.iter().min().copied() else { return Ok((0, per_partition)) };
    let filter = Filter {
        category: group.settings.category.clone(),
        types: group.settings.types.clone(),
        ..Filter::default()
    };
    let mut counted = 0usize;
    while scanned < head && counted < LAG_COUNTED_MAX {
        let query = LogQuery {
            filter: filter.clone(),
            from: Some(scanned.after(1)),
            direction: Direction::Forward,
            limit: 1000,
            bytes_max: 4 << 20,
        };
        let page = store.read_log(query).await?;
        for event in &page.events {
            let k = partition_of(event.stream.as_str(), group.settings.partitions) as usize;
            if event.position > positions[k] {
                per_partition[k] += 1;
            }
        }
        counted += page.events.len();
        scanned = page.next.map_or(page.head.max(scanned), |next| Position(next.0 - 1));
        if page.next.is_none() {
            break;
        }
    }
    let beyond = head.0.saturating_sub(scanned.0);
    Ok((per_partition.iter().sum::<u64>() + beyond, per_partition))
}

/// The event at `position`, if one is stored there.
///
/// # Errors
/// Storage fails.
pub async fn event_at(
    store: &dyn Store,
    position: crate::protocol::Position,
) -> Result<Option<crate::protocol::RecordedEvent>, crate::store::Error> {
    use crate::store::{Direction, Filter, LogQuery};
    if position == crate::protocol::Position(0) {
        return Ok(None);
    }
    let query = LogQuery {
        filter: Filter::default(),
        from: Some(position),
        direction: Direction::Forward,
        limit: 1,
        bytes_max: usize::MAX,
    };
    let page = store.read_log(query).await?;
    Ok(page.events.into_iter().find(|e| e.position == position))
}
