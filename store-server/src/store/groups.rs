//! Consumer groups as stored: settings, per partition the acknowledged position and the
//! owner, the members' leases, parked events. What changes them is decided by the
//! groups module on a [`GroupState`] read under the group's lock, and written back as
//! the difference.

use super::Error;
use crate::protocol::{
    Category, EventType, GroupName, MemberName, ParkedEvent, Position, Timestamp,
};
use std::collections::BTreeMap;

/// What a group was created with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSettings {
    /// Only the events of this category's streams.
    pub category: Option<Category>,
    /// Only events of these types, sorted (empty: every type).
    pub types: Vec<EventType>,
    /// How many partitions.
    pub partitions: u32,
    /// The position it started after.
    pub start: Position,
}

/// One partition of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    /// Acknowledged up to and including.
    pub position: Position,
    /// The member its events may be sent to; at most one.
    pub owner: Option<MemberName>,
    /// The member the coordinator gives it to next (the owner, once it is settled).
    pub wanted: Option<MemberName>,
    /// A `nack` without `park` asked for the events from here on to be sent again.
    pub redeliver_from: Option<Position>,
}

/// A member's lease: its connection, and how long it stands without a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberLease {
    /// The connection holding the name.
    pub session: String,
    /// When it lapses.
    pub expires_at: Timestamp,
}

/// A group as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    /// Its name.
    pub name: GroupName,
    /// Its settings.
    pub settings: GroupSettings,
    /// Its partitions, by number.
    pub partitions: Vec<PartitionState>,
    /// The members holding a lease.
    pub members: BTreeMap<MemberName, MemberLease>,
    /// How many events are parked.
    pub parked: u64,
    /// Events to park with this update (position, partition); written, then cleared.
    pub to_park: Vec<(Position, u32)>,
}

impl GroupState {
    /// A new group's state: every partition acknowledged up to `settings.start`.
    pub fn new(name: GroupName, settings: GroupSettings) -> Self {
        let partition = PartitionState {
            position: settings.start,
            owner: None,
            wanted: None,
            redeliver_from: None,
        };
        Self {
            name,
            partitions: vec![partition; settings.partitions as usize],
            settings,
            members: BTreeMap::new(),
            parked: 0,
            to_park: Vec::new(),
        }
    }
}

/// What `create_group` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The group is new.
    New,
    /// A group of that name exists, with these settings.
    Exists(GroupSettings),
}

/// A change to a group, applied under its lock to the state as stored.
pub type GroupChange<'a> = &'a mut (dyn FnMut(&mut GroupState) + Send);

/// What a backend stores of consumer groups.
#[async_trait::async_trait]
pub trait GroupStore: Send + Sync {
    /// Creates `group` unless one of its name exists.
    async fn create_group(&self, group: &GroupState, now: Timestamp) -> Result<Created, Error>;

    /// Every group, by name.
    async fn groups(&self) -> Result<Vec<GroupState>, Error>;

    /// One group.
    async fn group(&self, name: &GroupName) -> Result<Option<GroupState>, Error>;

    /// Forgets a group, its positions and its parked events; `false` if unknown.
    async fn delete_group(&self, name: &GroupName) -> Result<bool, Error>;

    /// Reads the group under its lock, runs `change` on it, and writes back what changed;
    /// `false` if the group is unknown. Two changes of one group never interleave.
    async fn change_group(&self, name: &GroupName, change: GroupChange<'_>) -> Result<bool, Error>;

    /// The parked events, by position.
    async fn parked(&self, name: &GroupName) -> Result<Vec<ParkedEvent>, Error>;

    /// Marks every parked event for delivery again; answers how many.
    async fn replay_parked(&self, name: &GroupName) -> Result<u64, Error>;

    /// Takes the parked events of `partitions` marked for replay: they are forgotten here
    /// and answered, to be sent again.
    async fn take_replays(
        &self,
        name: &GroupName,
        partitions: &[u32],
    ) -> Result<Vec<Position>, Error>;
}

/// The rows `change_group` writes back: what differs between `before` and `after`.
pub(super) struct GroupDiff<'a> {
    /// Partitions whose row changed, by number.
    pub partitions: Vec<(u32, &'a PartitionState)>,
    /// Members whose lease is new or renewed.
    pub leases: Vec<(&'a MemberName, &'a MemberLease)>,
    /// Members whose lease is gone.
    pub gone: Vec<&'a MemberName>,
}

impl<'a> GroupDiff<'a> {
    pub fn of(before: &'a GroupState, after: &'a GroupState) -> Self {
        let partitions = (0u32..)
            .zip(before.partitions.iter().zip(&after.partitions))
            .filter(|(_, (old, new))| old != new)
            .map(|(k, (_, new))| (k, new))
            .collect();
        let leases = after
            .members
            .iter()
            .filter(|(m, lease)| before.members.get(m) != Some(lease))
            .collect();
        let gone = before.members.keys().filter(|m| !after.members.contains_key(*m)).collect();
        Self { partitions, leases, gone }
    }
}

/// The types of a group as one column: a JSON array of sorted names.
pub(super) fn types_column(types: &[EventType]) -> String {
    serde_json::to_string(types).expect("names serialize")
}

/// The types column read back.
pub(super) fn types_of(column: &str) -> Result<Vec<EventType>, Error> {
    serde_json::from_str(column).map_err(|e| Error::CorruptRow(format!("group types: {e}")))
}

/// A name column read back, checked.
pub(super) fn member_of(column: String) -> Result<MemberName, Error> {
    MemberName::new(column).map_err(|e| Error::CorruptRow(format!("group member: {e}")))
}

/// A time column of SQLite (microseconds since the epoch) read back, checked.
pub(super) fn time_of(micros: i64) -> Result<Timestamp, Error> {
    Timestamp::from_unix_micros(micros)
        .ok_or_else(|| Error::CorruptRow(format!("time out of range: {micros}")))
}
