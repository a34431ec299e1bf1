//! Consumer groups on PostgreSQL. A change locks the group's row (`FOR UPDATE`), so that
//! changes made through any instance are applied one after the other.

use super::Postgres;
use crate::protocol::{Category, GroupName, ParkedEvent, Position, Timestamp};
use crate::store::Error;
use crate::store::groups::{
    Created, GroupChange, GroupDiff, GroupSettings, GroupState, GroupStore, MemberLease,
    PartitionState, member_of, types_column, types_of,
};
use crate::store::rows::{to_i64, to_u64};
use tokio_postgres::GenericClient;

const SETTINGS: &str = "SELECT category, types, partitions, start FROM groups WHERE name = $1";

async fn settings_of(
    client: &impl GenericClient,
    name: &GroupName,
    lock: bool,
) -> Result<Option<GroupSettings>, Error> {
    let sql = if lock { format!("{SETTINGS} FOR UPDATE") } else { SETTINGS.to_owned() };
    let Some(row) = client.query_opt(&sql, &[&name.as_str()]).await? else { return Ok(None) };
    let category: Option<String> = row.get(0);
    let partitions: i32 = row.get(2);
    Ok(Some(GroupSettings {
        category: category
            .map(Category::new)
            .transpose()
            .map_err(|e| Error::CorruptRow(format!("group category: {e}")))?,
        types: types_of(row.get(1))?,
        partitions: u32::try_from(partitions)
            .map_err(|_| Error::CorruptRow(format!("group partitions: {partitions}")))?,
        start: Position(to_u64(row.get(3), 0, "group start")?),
    }))
}

async fn state_of(
    client: &impl GenericClient,
    name: &GroupName,
    lock: bool,
) -> Result<Option<GroupState>, Error> {
    let Some(settings) = settings_of(client, name, lock).await? else { return Ok(None) };
    let mut state = GroupState::new(name.clone(), settings);
    let key = name.as_str();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&key];
    let (partitions, members, parked) = tokio::try_join!(
        client.query(
            "SELECT partition, position, owner, wanted, redeliver_from FROM group_partitions
             WHERE group_name = $1",
            &params,
        ),
        client.query(
            "SELECT member, session, expires_at FROM group_members WHERE group_name = $1",
            &params,
        ),
        client.query_one("SELECT count(*) FROM group_parked WHERE group_name = $1", &params),
    )?;
    for row in partitions {
        let partition: i32 = row.get(0);
        let slot = usize::try_from(partition)
            .ok()
            .and_then(|k| state.partitions.get_mut(k))
            .ok_or_else(|| Error::CorruptRow(format!("group partition {partition}")))?;
        let redeliver_from: Option<i64> = row.get(4);
        *slot = PartitionState {
            position: Position(to_u64(row.get(1), 0, "group position")?),
            owner: row.get::<_, Option<String>>(2).map(member_of).transpose()?,
            wanted: row.get::<_, Option<String>>(3).map(member_of).transpose()?,
            redeliver_from: redeliver_from
                .map(|p| to_u64(p, 0, "redelivery").map(Position))
                .transpose()?,
        };
    }
    for row in members {
        let at: time::OffsetDateTime = row.get(2);
        let lease = MemberLease { session: row.get(1), expires_at: Timestamp::from(at) };
        state.members.insert(member_of(row.get(0))?, lease);
    }
    state.parked = to_u64(parked.get(0), 0, "parked")?;
    Ok(Some(state))
}

async fn write_back(
    tx: &tokio_postgres::Transaction<'_>,
    before: &GroupState,
    after: &GroupState,
    now: Timestamp,
) -> Result<(), Error> {
    let name = after.name.as_str();
    let diff = GroupDiff::of(before, after);
    for (k, row) in diff.partitions {
        tx.execute(
            "UPDATE group_partitions SET position = $3, owner = $4, wanted = $5, redeliver_from = $6
             WHERE group_name = $1 AND partition = $2",
            &[
                &name,
                &(k as i32),
                &to_i64(row.position.0),
                &row.owner.as_ref().map(|m| m.as_str()),
                &row.wanted.as_ref().map(|m| m.as_str()),
                &row.redeliver_from.map(|p| to_i64(p.0)),
            ],
        )
        .await?;
    }
    for (member, lease) in diff.leases {
        tx.execute(
            "INSERT INTO group_members (group_name, member, session, expires_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (group_name, member) DO UPDATE
             SET session = EXCLUDED.session, expires_at = EXCLUDED.expires_at",
            &[&name, &member.as_str(), &lease.session, &lease.expires_at.to_offset_date_time()],
        )
        .await?;
    }
    for member in diff.gone {
        tx.execute(
            "DELETE FROM group_members WHERE group_name = $1 AND member = $2",
            &[&name, &member.as_str()],
        )
        .await?;
    }
    for (position, k) in &after.to_park {
        tx.execute(
            "INSERT INTO group_parked (group_name, position, partition, parked_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[&name, &to_i64(position.0), &(*k as i32), &now.to_offset_date_time()],
        )
        .await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl GroupStore for Postgres {
    async fn create_group(&self, group: &GroupState, now: Timestamp) -> Result<Created, Error> {
        let mut client = self.connection().await?;
        let tx = client.transaction().await?;
        let settings = &group.settings;
        let inserted = tx
            .execute(
                "INSERT INTO groups (name, category, types, partitions, start, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
                &[
                    &group.name.as_str(),
                    &settings.category.as_ref().map(|c| c.as_str()),
                    &types_column(&settings.types),
                    &(settings.partitions as i32),
                    &to_i64(settings.start.0),
                    &now.to_offset_date_time(),
                ],
            )
            .await?;
        if inserted == 0 {
            let existing = settings_of(&*tx, &group.name, false).await?;
            tx.commit().await?;
            return Ok(match existing {
                Some(existing) => Created::Exists(existing),
                // Deleted meanwhile: as good as created by someone else and gone.
                None => Created::Exists(settings.clone()),
            });
        }
        tx.execute(
            "INSERT INTO group_partitions (group_name, partition, position)
             SELECT $1, k, $3 FROM generate_series(0, $2 - 1) AS k",
            &[&group.name.as_str(), &(settings.partitions as i32), &to_i64(settings.start.0)],
        )
        .await?;
        tx.commit().await?;
        Ok(Created::New)
    }

    async fn groups(&self) -> Result<Vec<GroupState>, Error> {
        let client = self.connection().await?;
        let names = client.query("SELECT name FROM groups ORDER BY name", &[]).await?;
        let mut groups = Vec::with_capacity(names.len());
        for row in names {
            let name = GroupName::new(row.get::<_, String>(0))
                .map_err(|e| Error::CorruptRow(format!("group name: {e}")))?;
            groups.extend(state_of(&**client, &name, false).await?);
        }
        Ok(groups)
    }

    async fn group(&self, name: &GroupName) -> Result<Option<GroupState>, Error> {
        let client = self.connection().await?;
        state_of(&**client, name, false).await
    }

    async fn delete_group(&self, name: &GroupName) -> Result<bool, Error> {
        let client = self.connection().await?;
        // The other tables follow by ON DELETE CASCADE.
        Ok(client.execute("DELETE FROM groups WHERE name = $1", &[&name.as_str()]).await? > 0)
    }

    async fn change_group(&self, name: &GroupName, change: GroupChange<'_>) -> Result<bool, Error> {
        let mut client = self.connection().await?;
        let tx = client.transaction().await?;
        let Some(before) = state_of(&*tx, name, true).await? else { return Ok(false) };
        let mut after = before.clone();
        change(&mut after);
        write_back(&tx, &before, &after, Timestamp::now()).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn parked(&self, name: &GroupName) -> Result<Vec<ParkedEvent>, Error> {
        let client = self.connection().await?;
        let rows = client
            .query(
                "SELECT position, partition, parked_at FROM group_parked WHERE group_name = $1
                 ORDER BY position",
                &[&name.as_str()],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let partition: i32 = row.get(1);
                let at: time::OffsetDateTime = row.get(2);
                Ok(ParkedEvent {
                    position: Position(to_u64(row.get(0), 0, "parked position")?),
                    partition: u32::try_from(partition)
                        .map_err(|_| Error::CorruptRow(format!("parked partition {partition}")))?,
                    parked_at: Timestamp::from(at),
                })
            })
            .collect()
    }

    async fn replay_parked(&self, name: &GroupName) -> Result<u64, Error> {
        let client = self.connection().await?;
        Ok(client
            .execute(
                "UPDATE group_parked SET replay = true WHERE group_name = $1",
                &[&name.as_str()],
            )
            .await?)
    }

    async fn take_replays(
        &self,
        name: &GroupName,
        partitions: &[u32],
    ) -> Result<Vec<Position>, Error> {
        let client = self.connection().await?;
        let partitions: Vec<i32> = partitions.iter().map(|&k| k as i32).collect();
        let rows = client
            .query(
                "DELETE FROM group_parked
                 WHERE group_name = $1 AND partition = ANY($2) AND replay RETURNING position",
                &[&name.as_str(), &partitions],
            )
            .await?;
        let mut taken = rows
            .iter()
            .map(|row| to_u64(row.get(0), 0, "parked position").map(Position))
            .collect::<Result<Vec<_>, _>>()?;
        taken.sort_unstable();
        Ok(taken)
    }
}
