//! Consumer groups: the events of a filter spread over the members connected, each stream
//! in one partition, each partition with one owner at a time.

use super::events::Timestamp;
use super::names::{Category, EventType, GroupName, MemberName, Position};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;

/// The most partitions a group may have.
pub const PARTITIONS_MAX: u32 = 1024;
/// A group's partitions when its creation does not say.
pub const PARTITIONS_DEFAULT: u32 = 16;

/// The partition of `stream` in a group of `partitions`: FNV-1a (64-bit) of the stream's
/// name as UTF-8, modulo the partitions. Members may compute it themselves.
pub fn partition_of(stream: &str, partitions: u32) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash =
        stream.bytes().fold(OFFSET, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(PRIME));
    u32::try_from(hash % u64::from(partitions.max(1))).expect("less than a u32 partition count")
}

/// Where a new group starts: after a position, or after the log's head at its creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupStart {
    /// After this position (`0`: from the beginning).
    After(Position),
    /// After the head at creation (`"end"`).
    #[default]
    End,
}

impl Serialize for GroupStart {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::After(position) => position.serialize(serializer),
            Self::End => serializer.serialize_str("end"),
        }
    }
}

impl<'de> Deserialize<'de> for GroupStart {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Position(u64),
            Word(String),
        }
        match Raw::deserialize(deserializer)
            .map_err(|_| de::Error::custom("after must be a position or \"end\""))?
        {
            Raw::Position(position) => Ok(Self::After(Position(position))),
            Raw::Word(word) if word == "end" => Ok(Self::End),
            Raw::Word(_) => Err(de::Error::custom("after must be a position or \"end\"")),
        }
    }
}

/// The body of `PUT /groups/{group}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    /// Only the events of this category's streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<Category>,
    /// Only events of these types (none: every type).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<EventType>,
    /// How many partitions, 1 to [`PARTITIONS_MAX`].
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Where it starts (default: from the beginning, after position 0).
    #[serde(default = "from_the_beginning")]
    pub after: GroupStart,
}

fn default_partitions() -> u32 {
    PARTITIONS_DEFAULT
}

fn from_the_beginning() -> GroupStart {
    GroupStart::After(Position(0))
}

/// A member and the partitions it owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    /// The member.
    pub member: MemberName,
    /// What it owns now, in order.
    pub partitions: Vec<u32>,
}

/// A group as `GET /groups/{group}` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Its name.
    pub name: GroupName,
    /// Its category filter.
    pub category: Option<Category>,
    /// Its type filter (empty: every type).
    pub types: Vec<EventType>,
    /// How many partitions it has.
    pub partitions: u32,
    /// The members connected, by name.
    pub members: Vec<GroupMember>,
    /// Each partition's acknowledged position.
    pub positions: BTreeMap<u32, Position>,
    /// Events matching the filter after the acknowledged positions.
    pub lag: u64,
    /// Events parked.
    pub parked: u64,
}

/// The body of `POST /groups/{group}/ack`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupAck {
    /// Who acknowledges.
    pub member: MemberName,
    /// Per partition, the position handled up to and including.
    pub positions: BTreeMap<u32, Position>,
}

/// The body of `POST /groups/{group}/nack`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupNack {
    /// Who gives the event back.
    pub member: MemberName,
    /// The event's position.
    pub position: Position,
    /// `true`: set it aside (parked) and go on; `false`: deliver it again, and what
    /// followed it in its partition.
    #[serde(default)]
    pub park: bool,
}

/// The data of an `assigned` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assigned {
    /// What this member owns from now on, in order.
    pub partitions: Vec<u32>,
}

/// One parked event, as `GET /groups/{group}/parked` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedEvent {
    /// Its position.
    pub position: Position,
    /// Its partition.
    pub partition: u32,
    /// When it was parked.
    pub parked_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_fnv1a_64_of_the_name_modulo_the_count() {
        // FNV-1a 64 of "" is the offset basis, of "a" the published test vector.
        assert_eq!(
            partition_of("", u32::MAX),
            (0xcbf2_9ce4_8422_2325u64 % u64::from(u32::MAX)) as u32
        );
        assert_eq!(0xaf63_dc4c_8601_ec8cu64 % 16, u64::from(partition_of("a", 16)));
        assert_eq!(partition_of("account-1", 1), 0);
        let spread: std::collections::HashSet<u32> =
            (0..1000).map(|n| partition_of(&format!("account-{n}"), 16)).collect();
        assert_eq!(spread.len(), 16, "1000 streams reach every one of 16 partitions");
    }

    #[test]
    fn a_group_starts_after_a_position_or_at_the_end() {
        let create: CreateGroup = serde_json::from_str("{}").unwrap();
        assert_eq!(create.after, GroupStart::After(Position(0)));
        assert_eq!(create.partitions, PARTITIONS_DEFAULT);
        let create: CreateGroup = serde_json::from_str(r#"{"after": "end"}"#).unwrap();
        assert_eq!(create.after, GroupStart::End);
        let create: CreateGroup = serde_json::from_str(r#"{"after": 7}"#).unwrap();
        assert_eq!(create.after, GroupStart::After(Position(7)));
        for bad in
            [r#"{"after": "start"}"#, r#"{"after": -1}"#, r#"{"after": null}"#, r#"{"x": 1}"#]
        {
            assert!(serde_json::from_str::<CreateGroup>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ack_positions_are_keyed_by_partition_number() {
        let ack: GroupAck =
            serde_json::from_str(r#"{"member": "m1", "positions": {"3": 10, "0": 2}}"#).unwrap();
        assert_eq!(ack.positions, BTreeMap::from([(0, Position(2)), (3, Position(10))]));
        assert!(
            serde_json::from_str::<GroupAck>(r#"{"member": "m1", "positions": {"x": 1}}"#).is_err()
        );
    }
}
