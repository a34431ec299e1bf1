//! Migrations: the numbered SQL files of `migrations/<backend>/`, embedded in the binary,
//! applied in order, one transaction each, and recorded in `schema_migrations` with a
//! checksum. A database whose applied file changed, or that knows a migration this binary
//! does not, is refused rather than guessed at.

use super::Error;
use sha2::{Digest, Sha256};

/// One embedded migration file.
#[derive(Debug)]
pub struct Migration {
    /// The number the file name starts with.
    pub version: i64,
    /// The file name.
    pub name: &'static str,
    /// Its SQL.
    pub sql: &'static str,
}

impl Migration {
    /// The SHA-256 of the file, in hex: what the ledger keeps to notice edits.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }
}

macro_rules! embed {
    ($backend:literal: $($file:literal),+ $(,)?) => {
        &[$((
            $file,
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/", $backend, "/", $file)),
        )),+]
    };
}

const SQLITE_FILES: &[(&str, &str)] = embed!("sqlite":
    "0001_initial.sql", "0002_consumers.sql", "0003_lifecycle.sql", "0004_personal_data.sql",
    "0005_tags.sql", "0006_catalog.sql", "0007_import.sql", "0008_groups.sql");
const POSTGRES_FILES: &[(&str, &str)] = embed!("postgres":
    "0001_initial.sql", "0002_consumers.sql", "0003_lifecycle.sql", "0004_personal_data.sql",
    "0005_tags.sql", "0006_catalog.sql", "0007_import.sql", "0008_groups.sql");

/// The SQLite migrations, in order.
pub fn sqlite() -> Vec<Migration> {
    parse(SQLITE_FILES)
}

/// The PostgreSQL migrations, in order.
pub fn postgres() -> Vec<Migration> {
    parse(POSTGRES_FILES)
}

fn parse(files: &[(&'static str, &'static str)]) -> Vec<Migration> {
    files
        .iter()
        .map(|&(name, sql)| Migration {
            version: name
                .split('_')
                .next()
                .and_then(|n| n.parse().ok())
                .expect("migration file names start with their number (checked by a test)"),
            name,
            sql,
        })
        .collect()
}

/// The ledger, created before anything else is read.
pub const LEDGER_SQL: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version    BIGINT PRIMARY KEY,
    name       TEXT   NOT NULL,
    checksum   TEXT   NOT NULL,
    applied_at TEXT   NOT NULL
)";

/// The migrations still to apply, given the ledger's `(version, checksum)` rows.
///
/// # Errors
/// An applied migration's file changed, or the database has one this binary lacks.
pub fn pending<'a>(
    migrations: &'a [Migration],
    applied: &[(i64, String)],
) -> Result<Vec<&'a Migration>, Error> {
    for (version, checksum) in applied {
        let Some(known) = migrations.iter().find(|m| m.version == *version) else {
            return Err(Error::Migration(format!(
                "the database has migration {version}, which this binary does not know: \
                 it was migrated by a newer version of store-server"
            )));
        };
        if known.checksum() != *checksum {
            return Err(Error::Migration(format!(
                "{} was changed after it was applied (checksum {} in the database, {} now); \
                 applied migrations must never be edited, add a new file instead",
                known.name,
                checksum,
                known.checksum()
            )));
        }
    }
    Ok(migrations.iter().filter(|m| !applied.iter().any(|(v, _)| *v == m.version)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_numbered_one_by_one() {
        for migrations in [sqlite(), postgres()] {
            let versions: Vec<i64> = migrations.iter().map(|m| m.version).collect();
            let expected: Vec<i64> = (1..=versions.len() as i64).collect();
            assert_eq!(versions, expected);
        }
    }

    #[test]
    fn a_changed_or_unknown_migration_is_refused() {
        let migrations = sqlite();
        let applied: Vec<(i64, String)> =
            migrations.iter().map(|m| (m.version, m.checksum())).collect();
        assert!(pending(&migrations, &applied).unwrap().is_empty());
        assert_eq!(pending(&migrations, &applied[..1]).unwrap().len(), migrations.len() - 1);
        assert_eq!(pending(&migrations, &[]).unwrap().len(), migrations.len());
        assert!(pending(&migrations, &[(1, "0".repeat(64))]).is_err());
        let unknown = [applied, vec![(999, String::new())]].concat();
        assert!(pending(&migrations, &unknown).is_err());
    }
}
