//! What PostgreSQL's own replication says: whether commits wait for a standby, and how far
//! the read replica is.
//!
//! Why positions read from a hot standby are gap-free and in commit order, as on the
//! primary: commits hold the `log_head` row lock until their commit record is written (and,
//! with a synchronous standby, until the standby has it), so commit records reach the WAL
//! in position order. A standby replays the WAL in order, one record after another, and a
//! query there sees exactly the transactions whose commit records were replayed before its
//! snapshot: a prefix of the log, never a later position without the earlier ones.

use crate::protocol::Position;
use crate::store::rows::to_u64;
use crate::store::{CommitReplication, Error, ReplicaState, Replication};
use deadpool_postgres::{GenericClient, Pool};
use tracing::warn;

/// What the primary's settings and its WAL senders say, and the replica's position.
pub(super) async fn status(
    primary: &impl GenericClient,
    replica: Option<&Pool>,
) -> Result<Replication, Error> {
    let row = primary
        .query_one(
            "SELECT current_setting('synchronous_standby_names'), \
             current_setting('synchronous_commit'), (SELECT count(*) FROM pg_stat_replication)",
            &[],
        )
        .await?;
    let (names, commit, standbys): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
    let standbys = to_u64(standbys, 0, "standbys")?;
    // `local` (and `off`, refused at start-up) acknowledge before any standby has it.
    let waits = !names.trim().is_empty() && !matches!(commit.as_str(), "local" | "off");
    let commits = match (waits, standbys) {
        (true, _) => CommitReplication::Synchronous,
        (false, 0) => CommitReplication::None,
        (false, _) => CommitReplication::Asynchronous,
    };
    let replica = match replica {
        Some(pool) => match replica_state(pool).await {
            Ok(state) => Some(state),
            Err(err) => {
                warn!(cause = %crate::error_chain(&err), "the read replica does not answer");
                None
            }
        },
        None => None,
    };
    Ok(Replication { commits, standbys, replica })
}

/// How far the replica has replayed.
async fn replica_state(pool: &Pool) -> Result<ReplicaState, Error> {
    let client = pool.get().await?;
    // Nothing received and not replayed: caught up, however long ago the last commit was.
    let row = match client
        .query_one(
            "SELECT (SELECT position FROM log_head), CASE \
             WHEN NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() \
             THEN 0 ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) \
             END::float8",
            &[],
        )
        .await
    {
        Ok(row) => row,
        // It answers, but has not replayed the store's schema yet: it has no event.
        Err(err) if err.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            return Ok(ReplicaState { head: Position(0), lag_seconds: 0.0 });
        }
        Err(err) => return Err(err.into()),
    };
    let head = Position(to_u64(row.get(0), 0, "log head")?);
    let lag_seconds: f64 = row.get(1);
    Ok(ReplicaState { head, lag_seconds: lag_seconds.max(0.0) })
}

/// Refuses a read URL that leads to another database than the primary's (it would serve
/// another store's events), when the replica answers at start-up; one that does not answer
/// yet is only warned about, and reads answer 503 until it does.
pub(super) async fn check_replica(
    primary: &impl GenericClient,
    replica: &Pool,
) -> Result<(), Error> {
    let client = match replica.get().await {
        Ok(client) => client,
        Err(err) => {
            warn!(cause = %crate::error_chain(&err), "the read replica does not answer yet; reads answer 503 until it does");
            return Ok(());
        }
    };
    let (ours, theirs) = tokio::try_join!(identity(primary), identity(&client))?;
    if ours.0.is_some() && theirs.0.is_some() && ours != theirs {
        return Err(Error::Replica(format!(
            "--read-database-url leads to database {} of cluster {}, not to a replica of the \
             primary's database {} of cluster {}",
            theirs.1,
            theirs.0.unwrap_or_default(),
            ours.1,
            ours.0.unwrap_or_default()
        )));
    }
    Ok(())
}

/// The cluster's system identifier (`None` for a role not allowed to read it) and the
/// database's name: a standby has its primary's.
async fn identity(client: &impl GenericClient) -> Result<(Option<String>, String), Error> {
    let database: String = client.query_one("SELECT current_database()", &[]).await?.get(0);
    let system = client
        .query_one("SELECT system_identifier::text FROM pg_control_system()", &[])
        .await
        .map(|row| row.get(0));
    match system {
        Ok(system) => Ok((Some(system), database)),
        Err(err)
            if err.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
        {
            Ok((None, database))
        }
        Err(err) => Err(err.into()),
    }
}
