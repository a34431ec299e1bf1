//! Who should own each partition of a group: a pure decision the coordinator applies.

use crate::protocol::MemberName;
use std::collections::BTreeMap;

/// The owner each partition should have, given the members connected and who owns what now
/// (`owners[k]` for partition `k`). Every member gets `partitions / members` partitions or
/// one more; a member keeps what it owns up to its share, so that a rebalance moves only
/// what it must; the members owning most now get the larger shares.
pub fn assign(members: &[MemberName], owners: &[Option<MemberName>]) -> Vec<Option<MemberName>> {
    if members.is_empty() {
        return vec![None; owners.len()];
    }
    let mut held: BTreeMap<&MemberName, usize> = members.iter().map(|m| (m, 0)).collect();
    for owner in owners.iter().flatten() {
        if let Some(count) = held.get_mut(owner) {
            *count += 1;
        }
    }
    let (base, extra) = (owners.len() / members.len(), owners.len() % members.len());
    let mut by_holding: Vec<&MemberName> = held.keys().copied().collect();
    // Stable: among equal holdings, by name.
    by_holding.sort_by_key(|m| std::cmp::Reverse(held[m]));
    let mut room: BTreeMap<&MemberName, usize> = by_holding
        .iter()
        .enumerate()
        .map(|(rank, m)| (*m, base + usize::from(rank < extra)))
        .collect();
    let mut wanted: Vec<Option<MemberName>> = owners
        .iter()
        .map(|owner| {
            let owner = owner.as_ref()?;
            let left = room.get_mut(owner)?;
            (*left > 0).then(|| {
                *left -= 1;
                owner.clone()
            })
        })
        .collect();
    let mut takers = members.iter().flat_map(|m| std::iter::repeat_n(m, room[m]));
    for slot in wanted.iter_mut().filter(|slot| slot.is_none()) {
        *slot = takers.next().cloned();
    }
    wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(names: &[&str]) -> Vec<MemberName> {
        names.iter().map(|n| MemberName::new(*n).unwrap()).collect()
    }

    fn owners(assigned: &[Option<&str>]) -> Vec<Option<MemberName>> {
        assigned.iter().map(|o| o.map(|n| MemberName::new(n).unwrap())).collect()
    }

    fn shares(wanted: &[Option<MemberName>], members: &[MemberName]) -> Vec<usize> {
        members.iter().map(|m| wanted.iter().filter(|w| w.as_ref() == Some(m)).count()).collect()
    }

    #[test]
    fn every_partition_has_an_owner_and_shares_are_within_one_of_even() {
        for members in 1..=7 {
            for partitions in [1, 2, 5, 16, 17, 1024] {
                let members: Vec<MemberName> =
                    (0..members).map(|n| MemberName::new(format!("m{n}")).unwrap()).collect();
                let wanted = assign(&members, &vec![None; partitions]);
                assert!(wanted.iter().all(Option::is_some));
                let shares = shares(&wanted, &members);
                let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
                assert!(max - min <= 1, "{shares:?} for {partitions} partitions");
            }
        }
    }

    #[test]
    fn nothing_moves_when_nothing_changed() {
        let members = names(&["a", "b", "c"]);
        let first = assign(&members, &vec![None; 16]);
        assert_eq!(assign(&members, &first), first);
    }

    #[test]
    fn a_member_joining_takes_only_its_share_from_the_others() {
        let before = names(&["a", "b"]);
        let current = assign(&before, &vec![None; 16]);
        let after = names(&["a", "b", "c"]);
        let wanted = assign(&after, &current);
        let moved = current.iter().zip(&wanted).filter(|(c, w)| c != w).count();
        assert_eq!(moved, shares(&wanted, &after)[2], "only what c takes moves");
        assert!(shares(&wanted, &after).iter().all(|s| (5..=6).contains(s)));
    }

    #[test]
    fn a_member_leaving_gives_only_its_own_partitions_away() {
        let members = names(&["a", "b", "c"]);
        let current = assign(&members, &vec![None; 16]);
        let left = names(&["a", "c"]);
        let wanted = assign(&left, &current);
        for (now, next) in current.iter().zip(&wanted) {
            if now.as_ref().is_some_and(|m| m.as_str() != "b") {
                assert_eq!(now, next, "a's and c's partitions stay");
            }
        }
        assert_eq!(shares(&wanted, &left), vec![8, 8]);
    }

    #[test]
    fn owners_that_are_gone_count_for_nothing_and_no_members_own_nothing() {
        let wanted = assign(&names(&["a"]), &owners(&[Some("gone"), None, Some("a")]));
        assert_eq!(wanted, owners(&[Some("a"), Some("a"), Some("a")]));
        assert_eq!(assign(&[], &owners(&[Some("a")])), vec![None]);
    }
}
