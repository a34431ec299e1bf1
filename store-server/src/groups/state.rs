//! What members, acknowledgements and the coordinator do to a group's stored state: pure
//! changes, applied under the group's lock by [`crate::store::groups::GroupStore::change_group`].

use super::balance;
use crate::protocol::{MemberName, Position, Timestamp};
use crate::store::groups::{GroupState, MemberLease};
use std::collections::BTreeMap;
use std::time::Duration;

/// Why a change was refused; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Another connection holds the member's name.
    #[error("member {0} is connected already")]
    MemberConnected(MemberName),
    /// The member does not own the partition (any more).
    #[error("member {member} does not own partition {partition}")]
    NotOwner {
        /// The member.
        member: MemberName,
        /// The partition.
        partition: u32,
    },
    /// The group has no such partition.
    #[error("the group has no partition {0}")]
    NoPartition(u32),
}

fn later(now: Timestamp, ttl: Duration) -> Timestamp {
    let micros = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
    Timestamp::from_unix_micros(now.unix_micros().saturating_add(micros)).unwrap_or(now)
}

impl GroupState {
    /// Drops the leases lapsed at `now`; their members' partitions are free at once.
    pub fn expire(&mut self, now: Timestamp) {
        let lapsed: Vec<MemberName> = self
            .members
            .iter()
            .filter(|(_, lease)| lease.expires_at < now)
            .map(|(member, _)| member.clone())
            .collect();
        for member in lapsed {
            self.members.remove(&member);
            self.free(&member);
        }
    }

    /// Nothing is owned by or meant for `member` any more.
    fn free(&mut self, member: &MemberName) {
        for partition in &mut self.partitions {
            if partition.owner.as_ref() == Some(member) {
                partition.owner = None;
            }
            if partition.wanted.as_ref() == Some(member) {
                partition.wanted = None;
            }
        }
    }

    /// `member` connects as `session`, holding its name until `now + ttl` unless renewed.
    ///
    /// # Errors
    /// [`Refused::MemberConnected`] while another session holds the name.
    pub fn join(
        &mut self,
        member: &MemberName,
        session: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<(), Refused> {
        self.expire(now);
        if self.members.get(member).is_some_and(|lease| lease.session != session) {
            return Err(Refused::MemberConnected(member.clone()));
        }
        let lease = MemberLease { session: session.to_owned(), expires_at: later(now, ttl) };
        self.members.insert(member.clone(), lease);
        Ok(())
    }

    /// Renews `session`'s lease; `false` if it lapsed or was taken (the session is over).
    pub fn renew(
        &mut self,
        member: &MemberName,
        session: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> bool {
        match self.members.get_mut(member) {
            Some(lease) if lease.session == session && lease.expires_at >= now => {
                lease.expires_at = later(now, ttl);
                true
            }
            _ => false,
        }
    }

    /// `session` ended: its name and its partitions are free at once.
    pub fn leave(&mut self, member: &MemberName, session: &str) {
        if self.members.get(member).is_some_and(|lease| lease.session == session) {
            self.members.remove(member);
            self.free(member);
        }
    }

    /// `member` hands `partition` back (everything it was sent of it is acknowledged).
    pub fn release(&mut self, member: &MemberName, partition: u32) {
        if let Some(row) = self.partitions.get_mut(partition as usize) {
            if row.owner.as_ref() == Some(member) {
                row.owner = None;
            }
        }
    }

    fn owned(
        &mut self,
        member: &MemberName,
        partition: u32,
    ) -> Result<&mut crate::store::groups::PartitionState, Refused> {
        let row =
            self.partitions.get_mut(partition as usize).ok_or(Refused::NoPartition(partition))?;
        if row.owner.as_ref() != Some(member) {
            return Err(Refused::NotOwner { member: member.clone(), partition });
        }
        Ok(row)
    }

    /// `member` has handled its partitions' events up to the given positions. A position
    /// behind the stored one changes nothing (acknowledgements may arrive out of order).
    ///
    /// # Errors
    /// [`Refused`] if a partition is not the member's; then nothing is acknowledged.
    pub fn ack(
        &mut self,
        member: &MemberName,
        positions: &BTreeMap<u32, Position>,
    ) -> Result<(), Refused> {
        for &partition in positions.keys() {
            self.owned(member, partition)?;
        }
        for (&partition, &position) in positions {
            let row = self.owned(member, partition)?;
            row.position = row.position.max(position);
        }
        Ok(())
    }

    /// `member` gives back the event at `position` of `partition`: parked (kept aside and
    /// skipped), or to be sent again with what followed it.
    ///
    /// # Errors
    /// [`Refused`] if the partition is not the member's.
    pub fn nack(
        &mut self,
        member: &MemberName,
        partition: u32,
        position: Position,
        park: bool,
    ) -> Result<(), Refused> {
        let row = self.owned(member, partition)?;
        if position <= row.position {
            return Ok(()); // acknowledged already: nothing to give back
        }
        if park {
            self.to_park.push((position, partition));
        } else {
            row.redeliver_from =
                Some(row.redeliver_from.map_or(position, |from| from.min(position)));
        }
        Ok(())
    }

    /// The coordinator's turn: lapsed leases go, every partition gets the member it should
    /// have next, and a free partition goes to it at once. A partition a live member owns
    /// moves only once that member releases it. Answers whether anything changed.
    pub fn rebalance(&mut self, now: Timestamp) -> bool {
        let before = (self.members.len(), self.partitions.clone());
        self.expire(now);
        let members: Vec<MemberName> = self.members.keys().cloned().collect();
        let owners: Vec<Option<MemberName>> =
            self.partitions.iter().map(|p| p.owner.clone()).collect();
        for (row, wanted) in self.partitions.iter_mut().zip(balance::assign(&members, &owners)) {
            if row.owner.is_none() {
                row.owner.clone_from(&wanted);
            }
            row.wanted = wanted;
        }
        before != (self.members.len(), self.partitions.clone())
    }

    /// The partitions `member` owns and keeps: those it should go on being sent.
    pub fn assigned_to(&self, member: &MemberName) -> Vec<u32> {
        (0u32..)
            .zip(&self.partitions)
            .filter(|(_, row)| {
                row.owner.as_ref() == Some(member) && row.wanted.as_ref() == Some(member)
            })
            .map(|(k, _)| k)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::GroupName;
    use crate::store::groups::GroupSettings;

    const TTL: Duration = Duration::from_secs(10);

    fn group(partitions: u32) -> GroupState {
        let settings =
            GroupSettings { category: None, types: vec![], partitions, start: Position(0) };
        GroupState::new(GroupName::new("g").unwrap(), settings)
    }

    fn member(name: &str) -> MemberName {
        MemberName::new(name).unwrap()
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_unix_micros(1_700_000_000_000_000 + seconds * 1_000_000).unwrap()
    }

    fn owners(state: &GroupState) -> Vec<Option<&str>> {
        state.partitions.iter().map(|p| p.owner.as_ref().map(MemberName::as_str)).collect()
    }

    #[test]
    fn a_partition_has_one_owner_and_moves_only_once_released() {
        let mut state = group(4);
        state.join(&member("a"), "s1", at(0), TTL).unwrap();
        assert!(state.rebalance(at(0)));
        assert_eq!(owners(&state), [Some("a"); 4]);
        state.join(&member("b"), "s2", at(1), TTL).unwrap();
        state.rebalance(at(1));
        // b is wanted for two partitions, but a still owns them until it lets go.
        assert_eq!(owners(&state), [Some("a"); 4]);
        assert_eq!(state.assigned_to(&member("a")).len(), 2);
        assert!(state.assigned_to(&member("b")).is_empty());
        for k in 0..4 {
            if state.partitions[k].wanted.as_ref() == Some(&member("b")) {
                state.release(&member("a"), k as u32);
            }
        }
        state.rebalance(at(2));
        assert_eq!(state.assigned_to(&member("a")).len(), 2);
        assert_eq!(state.assigned_to(&member("b")).len(), 2);
    }

    #[test]
    fn a_lapsed_or_departed_member_loses_its_partitions_at_once() {
        let mut state = group(4);
        state.join(&member("a"), "s1", at(0), TTL).unwrap();
        state.join(&member("b"), "s2", at(0), TTL).unwrap();
        state.rebalance(at(0));
        assert!(state.renew(&member("a"), "s1", at(8), TTL));
        state.rebalance(at(11)); // b's lease lapsed at 10
        assert_eq!(owners(&state), [Some("a"); 4]);
        assert!(!state.renew(&member("b"), "s2", at(11), TTL), "b's session is over");
        state.leave(&member("a"), "s1");
        assert_eq!(owners(&state), [None; 4]);
    }

    #[test]
    fn one_connection_per_member_name() {
        let mut state = group(1);
        state.join(&member("a"), "s1", at(0), TTL).unwrap();
        assert_eq!(
            state.join(&member("a"), "s2", at(1), TTL),
            Err(Refused::MemberConnected(member("a")))
        );
        state.leave(&member("a"), "s2"); // not its session: nothing happens
        assert!(state.members.contains_key(&member("a")));
        state.join(&member("a"), "s2", at(11), TTL).unwrap(); // s1 lapsed
    }

    #[test]
    fn acks_only_from_the_owner_and_never_backwards() {
        let mut state = group(2);
        state.join(&member("a"), "s1", at(0), TTL).unwrap();
        state.rebalance(at(0));
        state.ack(&member("a"), &BTreeMap::from([(0, Position(5))])).unwrap();
        state.ack(&member("a"), &BTreeMap::from([(0, Position(3))])).unwrap();
        assert_eq!(state.partitions[0].position, Position(5));
        let refused = state.ack(&member("b"), &BTreeMap::from([(1, Position(9))]));
        assert_eq!(refused, Err(Refused::NotOwner { member: member("b"), partition: 1 }));
        let refused =
            state.ack(&member("a"), &BTreeMap::from([(0, Position(9)), (2, Position(9))]));
        assert_eq!(refused, Err(Refused::NoPartition(2)));
        assert_eq!(state.partitions[0].position, Position(5), "all or nothing");
    }

    #[test]
    fn a_nack_parks_or_asks_for_redelivery_from_the_earliest() {
        let mut state = group(1);
        state.join(&member("a"), "s1", at(0), TTL).unwrap();
        state.rebalance(at(0));
        state.nack(&member("a"), 0, Position(7), true).unwrap();
        assert_eq!(state.to_park, [(Position(7), 0)]);
        state.nack(&member("a"), 0, Position(9), false).unwrap();
        state.nack(&member("a"), 0, Position(8), false).unwrap();
        assert_eq!(state.partitions[0].redeliver_from, Some(Position(8)));
    }
}
