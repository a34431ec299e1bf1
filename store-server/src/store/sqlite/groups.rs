//! Consumer groups on SQLite. Changes run on the writer connection in an IMMEDIATE
//! transaction, so the read and the write back are one step.

use super::Sqlite;
use crate::protocol::{GroupName, ParkedEvent, Position, Timestamp};
use crate::store::Error;
use crate::store::groups::{
    Created, GroupChange, GroupDiff, GroupSettings, GroupState, GroupStore, MemberLease,
    PartitionState, member_of, time_of, types_column, types_of,
};
use crate::store::rows::{to_i64, to_u64};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::sync::PoisonError;

impl Sqlite {
    /// Runs `work` on the writer connection in an IMMEDIATE transaction, then commits.
    async fn group_write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = writer.lock().unwrap_or_else(PoisonError::into_inner);
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let answer = work(&tx)?;
            tx.commit()?;
            Ok(answer)
        })
        .await?
    }
}

fn settings_of(connection: &Connection, name: &GroupName) -> Result<Option<GroupSettings>, Error> {
    let row = connection
        .prepare_cached("SELECT category, types, partitions, start FROM groups WHERE name = ?1")?
        .query_row([name.as_str()], |row| {
            Ok((
                row.get::<_, Option<String>>(0)?,
                row.get::<_, String>(1)?,
                row.get(2)?,
                row.get(3)?,
            ))
        })
        .optional()?;
    let Some((category, types, partitions, start)) = row else { return Ok(None) };
    let category = category
        .map(crate::protocol::Category::new)
        .transpose()
        .map_err(|e| Error::CorruptRow(format!("group category: {e}")))?;
    let partitions: i64 = partitions;
    Ok(Some(GroupSettings {
        category,
        types: types_of(&types)?,
        partitions: u32::try_from(partitions)
            .map_err(|_| Error::CorruptRow(format!("group partitions: {partitions}")))?,
        start: Position(to_u64(start, 0, "group start")?),
    }))
}

fn state_of(connection: &Connection, name: &GroupName) -> Result<Option<GroupState>, Error> {
    let Some(settings) = settings_of(connection, name)? else { return Ok(None) };
    let mut state = GroupState::new(name.clone(), settings);
    let mut partitions = connection.prepare_cached(
        "SELECT partition, position, owner, wanted, redeliver_from FROM group_partitions
         WHERE group_name = ?1",
    )?;
    let rows = partitions.query_map([name.as_str()], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, Option<String>>(2)?,
            row.get::<_, Option<String>>(3)?,
            row.get::<_, Option<i64>>(4)?,
        ))
    })?;
    for row in rows {
        let (partition, position, owner, wanted, redeliver_from) = row?;
        let slot = usize::try_from(partition)
            .ok()
            .and_then(|k| state.partitions.get_mut(k))
            .ok_or_else(|| Error::CorruptRow(format!("group partition {partition}")))?;
        *slot = PartitionState {
            position: Position(to_u64(position, 0, "group position")?),
            owner: owner.map(member_of).transpose()?,
            wanted: wanted.map(member_of).transpose()?,
            redeliver_from: redeliver_from
                .map(|p| to_u64(p, 0, "redelivery").map(Position))
                .transpose()?,
        };
    }
    let mut members = connection.prepare_cached(
        "SELECT member, session, expires_at FROM group_members WHERE group_name = ?1",
    )?;
    let rows = members.query_map([name.as_str()], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, i64>(2)?))
    })?;
    for row in rows {
        let (member, session, expires_at) = row?;
        let lease = MemberLease { session, expires_at: time_of(expires_at)? };
        state.members.insert(member_of(member)?, lease);
    }
    let parked: i64 = connection
        .prepare_cached("SELECT count(*) FROM group_parked WHERE group_name = ?1")?
        .query_row([name.as_str()], |row| row.get(0))?;
    state.parked = to_u64(parked, 0, "parked")?;
    Ok(Some(state))
}

fn write_back(
    tx: &Connection,
    before: &GroupState,
    after: &GroupState,
    now: Timestamp,
) -> Result<(), Error> {
    let name = after.name.as_str();
    let diff = GroupDiff::of(before, after);
    let mut partition = tx.prepare_cached(
        "UPDATE group_partitions SET position = ?3, owner = ?4, wanted = ?5, redeliver_from = ?6
         WHERE group_name = ?1 AND partition = ?2",
    )?;
    for (k, row) in diff.partitions {
        partition.execute(params![
            name,
            k,
            to_i64(row.position.0),
            row.owner.as_ref().map(|m| m.as_str()),
            row.wanted.as_ref().map(|m| m.as_str()),
            row.redeliver_from.map(|p| to_i64(p.0)),
        ])?;
    }
    let mut lease = tx.prepare_cached(
        "INSERT INTO group_members (group_name, member, session, expires_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (group_name, member) DO UPDATE
         SET session = excluded.session, expires_at = excluded.expires_at",
    )?;
    for (member, held) in diff.leases {
        lease.execute(params![
            name,
            member.as_str(),
            held.session,
            held.expires_at.unix_micros()
        ])?;
    }
    let mut gone =
        tx.prepare_cached("DELETE FROM group_members WHERE group_name = ?1 AND member = ?2")?;
    for member in diff.gone {
        gone.execute(params![name, member.as_str()])?;
    }
    let mut park = tx.prepare_cached(
        "INSERT INTO group_parked (group_name, position, partition, parked_at)
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
    )?;
    for (position, k) in &after.to_park {
        park.execute(params![name, to_i64(position.0), k, now.unix_micros()])?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl GroupStore for Sqlite {
    async fn create_group(&self, group: &GroupState, now: Timestamp) -> Result<Created, Error> {
        let group = group.clone();
        self.group_write(move |tx| {
            if let Some(existing) = settings_of(tx, &group.name)? {
                return Ok(Created::Exists(existing));
            }
            let settings = &group.settings;
            tx.prepare_cached(
                "INSERT INTO groups (name, category, types, partitions, start, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                group.name.as_str(),
                settings.category.as_ref().map(|c| c.as_str()),
                types_column(&settings.types),
                settings.partitions,
                to_i64(settings.start.0),
                now.unix_micros()
            ])?;
            let mut partition = tx.prepare_cached(
                "INSERT INTO group_partitions (group_name, partition, position) VALUES (?1, ?2, ?3)",
            )?;
            for k in 0..settings.partitions {
                partition.execute(params![group.name.as_str(), k, to_i64(settings.start.0)])?;
            }
            Ok(Created::New)
        })
        .await
    }

    async fn groups(&self) -> Result<Vec<GroupState>, Error> {
        self.read(|connection| {
            let names = connection
                .prepare_cached("SELECT name FROM groups ORDER BY name")?
                .query_map([], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            let mut groups = Vec::with_capacity(names.len());
            for name in names {
                let name = GroupName::new(name)
                    .map_err(|e| Error::CorruptRow(format!("group name: {e}")))?;
                groups.extend(state_of(connection, &name)?);
            }
            Ok(groups)
        })
        .await
    }

    async fn group(&self, name: &GroupName) -> Result<Option<GroupState>, Error> {
        let name = name.clone();
        self.read(move |connection| state_of(connection, &name)).await
    }

    async fn delete_group(&self, name: &GroupName) -> Result<bool, Error> {
        let name = name.clone();
        self.group_write(move |tx| {
            for table in ["group_parked", "group_members", "group_partitions"] {
                tx.execute(&format!("DELETE FROM {table} WHERE group_name = ?1"), [name.as_str()])?;
            }
            Ok(tx.execute("DELETE FROM groups WHERE name = ?1", [name.as_str()])? > 0)
        })
        .await
    }

    async fn change_group(&self, name: &GroupName, change: GroupChange<'_>) -> Result<bool, Error> {
        let mut run = || {
            let mut connection = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some(before) = state_of(&tx, name)? else { return Ok(false) };
            let mut after = before.clone();
            change(&mut after);
            write_back(&tx, &before, &after, Timestamp::now())?;
            tx.commit()?;
            Ok(true)
        };
        // The change borrows from the caller, so it cannot go to a blocking thread: on the
        // multi-threaded runtime it runs here while tokio moves this worker's other tasks.
        match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(run),
            _ => run(),
        }
    }

    async fn parked(&self, name: &GroupName) -> Result<Vec<ParkedEvent>, Error> {
        let name = name.clone();
        self.read(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT position, partition, parked_at FROM group_parked WHERE group_name = ?1
                 ORDER BY position",
            )?;
            let rows = statement.query_map([name.as_str()], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
            })?;
            rows.map(|row| {
                let (position, partition, at) = row?;
                Ok(ParkedEvent {
                    position: Position(to_u64(position, 0, "parked position")?),
                    partition: u32::try_from(partition)
                        .map_err(|_| Error::CorruptRow(format!("parked partition {partition}")))?,
                    parked_at: time_of(at)?,
                })
            })
            .collect()
        })
        .await
    }

    async fn replay_parked(&self, name: &GroupName) -> Result<u64, Error> {
        let name = name.clone();
        self.group_write(move |tx| {
            let marked = tx.execute(
                "UPDATE group_parked SET replay = 1 WHERE group_name = ?1",
                [name.as_str()],
            )?;
            Ok(marked as u64)
        })
        .await
    }

    async fn take_replays(
        &self,
        name: &GroupName,
        partitions: &[u32],
    ) -> Result<Vec<Position>, Error> {
        let (name, partitions) = (name.clone(), partitions.to_vec());
        self.group_write(move |tx| {
            let mut take = tx.prepare_cached(
                "DELETE FROM group_parked WHERE group_name = ?1 AND partition = ?2 AND replay = 1
                 RETURNING position",
            )?;
            let mut taken = Vec::new();
            for k in partitions {
                let rows = take.query_map(params![name.as_str(), k], |row| row.get::<_, i64>(0))?;
                for position in rows {
                    taken.push(Position(to_u64(position?, 0, "parked position")?));
                }
            }
            taken.sort_unstable();
            Ok(taken)
        })
        .await
    }
}
