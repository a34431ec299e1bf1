//! The bank account of the seed tutorial, as separate processes around a store server:
//! `accounts` (the command side), `balances` (a read model in PostgreSQL), `bank-demo`.
//! This library is what they share: the events, the aggregate, the projection.

use projection_sdk::protocol::{DataSubject, EventType, StreamName};
use projection_sdk::{Aggregate, Envelope, HandlerError, Projection, Recorded, Target, Upcasters};
use serde::{Deserialize, Serialize};
use tokio_postgres::Transaction;

/// What happens to an account. Amounts are integers (cents, say).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum AccountEvent {
    /// Money came in. Schema version 2 added `currency`; version-1 events were in dollars.
    Deposited {
        /// How much.
        amount: i64,
        /// In what.
        currency: String,
    },
    /// Money went out.
    Withdrawn {
        /// How much.
        amount: i64,
    },
    /// The account holder's name: personal data, appended about the holder's data subject
    /// ([`holder`]), so that erasing the holder erases it from the store.
    HolderNamed {
        /// The name.
        name: String,
    },
}

/// The data subject of the holder of account `id`.
///
/// # Errors
/// `id` does not make a valid data subject.
pub fn holder(id: &str) -> Result<DataSubject, projection_sdk::protocol::InvalidName> {
    DataSubject::new(format!("holder-{id}"))
}

/// The upcasters of the account events: Deposited v1 → v2 adds `"currency": "USD"`.
pub fn upcasters() -> Upcasters {
    Upcasters::new().register("Deposited", 1, |mut data| {
        data["currency"] = "USD".into();
        Ok(data)
    })
}

/// The stream of account `id`.
///
/// # Errors
/// `id` does not make a valid stream name.
pub fn stream(id: &str) -> Result<StreamName, projection_sdk::protocol::InvalidName> {
    StreamName::new(format!("account-{id}"))
}

/// An account, rebuilt from its events.
#[derive(Debug, Default)]
pub struct Account {
    balance: i64,
}

/// What a client asks of an account.
#[derive(Debug, Clone, Copy)]
pub enum Command {
    /// Put money in.
    Deposit(i64),
    /// Take money out.
    Withdraw(i64),
}

/// Why an account refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Amounts must be above zero.
    #[error("the amount must be a positive integer")]
    NotPositive,
    /// There is not that much in the account.
    #[error("insufficient funds: the balance is {balance}")]
    InsufficientFunds {
        /// What there is.
        balance: i64,
    },
}

impl Aggregate for Account {
    type Event = AccountEvent;
    type Command = Command;
    type Error = Refusal;

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Deposited { amount, .. } => self.balance += amount,
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
            // Who holds it decides nothing: the balance is rebuilt without it once erased.
            AccountEvent::HolderNamed { .. } => {}
        }
    }

    fn handle(&self, command: Command) -> Result<Vec<AccountEvent>, Refusal> {
        match command {
            Command::Deposit(amount) | Command::Withdraw(amount) if amount <= 0 => {
                Err(Refusal::NotPositive)
            }
            Command::Deposit(amount) => {
                Ok(vec![AccountEvent::Deposited { amount, currency: "USD".into() }])
            }
            Command::Withdraw(amount) if amount > self.balance => {
                Err(Refusal::InsufficientFunds { balance: self.balance })
            }
            Command::Withdraw(amount) => Ok(vec![AccountEvent::Withdrawn { amount }]),
        }
    }
}

/// The read model: one balance per account, and its holder's name, in table `balances_v1`.
///
/// It follows the log (not only the `account` category), so that it hears of erasures in
/// `$data-subjects` and drops the holder's name.
pub struct Balances;

/// One change to the read model, in log order.
enum Change<'a> {
    Amount(&'a str, i64),
    Holder(&'a str, &'a str, &'a str),
    Closed(&'a str),
    Erased(&'a str),
}

#[async_trait::async_trait]
impl Projection for Balances {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "balances"
    }

    fn target(&self) -> Target {
        let types = ["Deposited", "Withdrawn", "HolderNamed"];
        Target::All {
            types: types.map(|t| EventType::new(t).expect("valid types")).to_vec(),
            tags: Vec::new(),
        }
    }

    async fn setup(&self, tx: &Transaction<'_>) -> Result<(), HandlerError> {
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS balances_v1 (
                 account_id text   PRIMARY KEY,
                 balance    bigint NOT NULL
             );
             ALTER TABLE balances_v1 ADD COLUMN IF NOT EXISTS holder text,
                                     ADD COLUMN IF NOT EXISTS holder_subject text",
        )
        .await?;
        Ok(())
    }

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        event: &Envelope<AccountEvent>,
    ) -> Result<(), HandlerError> {
        self.apply_batch(tx, std::slice::from_ref(event)).await
    }

    /// Sums the batch's amounts per account and writes them in one statement; the rarer
    /// changes (a holder named, an account closed, a holder erased) are written in order
    /// before them, so a batch ends as the events, applied one by one, would leave it.
    async fn apply_batch(
        &self,
        tx: &Transaction<'_>,
        events: &[Envelope<AccountEvent>],
    ) -> Result<(), HandlerError> {
        let mut changes: std::collections::BTreeMap<&str, i64> = Default::default();
        for change in events.iter().filter_map(change) {
            match change {
                Change::Amount(id, amount) => *changes.entry(id).or_default() += amount,
                // A closed account's row goes; a recreated one starts again from nothing.
                Change::Closed(id) => {
                    changes.remove(id);
                    tx.execute("DELETE FROM balances_v1 WHERE account_id = $1", &[&id]).await?;
                }
                Change::Holder(id, name, subject) => {
                    tx.execute(
                        "INSERT INTO balances_v1 (account_id, balance, holder, holder_subject)
                         VALUES ($1, 0, $2, $3) ON CONFLICT (account_id)
                         DO UPDATE SET holder = $2, holder_subject = $3",
                        &[&id, &name, &subject],
                    )
                    .await?;
                }
                Change::Erased(subject) => {
                    tx.execute(
                        "UPDATE balances_v1 SET holder = NULL, holder_subject = NULL
                         WHERE holder_subject = $1",
                        &[&subject],
                    )
                    .await?;
                }
            }
        }
        let (ids, amounts): (Vec<&str>, Vec<i64>) = changes.into_iter().unzip();
        tx.execute(
            "INSERT INTO balances_v1 (account_id, balance)
             SELECT * FROM UNNEST($1::text[], $2::bigint[])
             ON CONFLICT (account_id) DO UPDATE SET balance = balances_v1.balance + EXCLUDED.balance",
            &[&ids, &amounts],
        )
        .await?;
        Ok(())
    }

    async fn reset(&self, tx: &Transaction<'_>) -> Result<(), HandlerError> {
        tx.batch_execute("DELETE FROM balances_v1").await?;
        Ok(())
    }
}

/// What `event` changes in the read model, if anything.
fn change(event: &Envelope<AccountEvent>) -> Option<Change<'_>> {
    let account = event.stream.as_str().strip_prefix("account-");
    Some(match &event.event {
        Recorded::Event(AccountEvent::Deposited { amount, .. }) => {
            Change::Amount(account?, *amount)
        }
        Recorded::Event(AccountEvent::Withdrawn { amount }) => Change::Amount(account?, -amount),
        Recorded::Event(AccountEvent::HolderNamed { name }) => {
            Change::Holder(account?, name, event.data_subject.as_ref()?.as_str())
        }
        Recorded::StreamDeleted(_) => Change::Closed(account?),
        Recorded::DataSubjectErased(erased) => Change::Erased(erased.data_subject.as_str()),
        // A truncated stream keeps its balance: it was built from the events before. An
        // erased name was dropped when its erasure came by.
        _ => return None,
    })
}

/// The same read model run by a consumer group: any number of `balances --group-member`
/// processes share the accounts, each account's events applied by one of them at a time,
/// in order. Delivery is at-least-once, so each row keeps the revision it was built up to
/// and an event seen again changes nothing.
///
/// It follows the `account` category (a group has one filter), so it does not hear of
/// erasures in `$data-subjects`: run the single [`Balances`] runner where holders' names
/// must go at once.
pub struct GroupBalances {
    db: tokio_postgres::Client,
}

/// The group [`GroupBalances`] runs in, and how it is created.
pub fn balances_group()
-> (projection_sdk::protocol::GroupName, projection_sdk::protocol::CreateGroup) {
    let types = ["Deposited", "Withdrawn", "HolderNamed", "$stream-deleted"];
    let create = projection_sdk::protocol::CreateGroup {
        category: Some(projection_sdk::protocol::Category::new("account").expect("a category")),
        types: types.map(|t| EventType::new(t).expect("valid types")).to_vec(),
        partitions: 16,
        after: projection_sdk::protocol::GroupStart::After(projection_sdk::protocol::Position(0)),
    };
    (projection_sdk::protocol::GroupName::new("balances").expect("a group name"), create)
}

impl GroupBalances {
    /// Creates `balances_v1` (and its revision column) if missing.
    ///
    /// # Errors
    /// The read model's database fails.
    pub async fn new(db: tokio_postgres::Client) -> Result<Self, tokio_postgres::Error> {
        db.batch_execute(
            "CREATE TABLE IF NOT EXISTS balances_v1 (
                 account_id text   PRIMARY KEY,
                 balance    bigint NOT NULL
             );
             ALTER TABLE balances_v1 ADD COLUMN IF NOT EXISTS holder text,
                                     ADD COLUMN IF NOT EXISTS holder_subject text,
                                     ADD COLUMN IF NOT EXISTS revision bigint NOT NULL DEFAULT -1",
        )
        .await?;
        Ok(Self { db })
    }
}

#[async_trait::async_trait]
impl projection_sdk::GroupHandler for GroupBalances {
    type Event = AccountEvent;

    async fn apply(&mut self, event: &Envelope<AccountEvent>) -> Result<(), HandlerError> {
        let revision = i64::try_from(event.revision.0)?;
        let Some(change) = change(event) else { return Ok(()) };
        // Each statement applies only past the row's revision: a redelivered event is a no-op.
        match change {
            Change::Amount(id, amount) => {
                self.db
                    .execute(
                        "INSERT INTO balances_v1 (account_id, balance, revision) VALUES ($1, $2, $3)
                         ON CONFLICT (account_id) DO UPDATE
                         SET balance = balances_v1.balance + EXCLUDED.balance, revision = $3
                         WHERE balances_v1.revision < $3",
                        &[&id, &amount, &revision],
                    )
                    .await?;
            }
            Change::Holder(id, name, subject) => {
                self.db
                    .execute(
                        "INSERT INTO balances_v1 (account_id, balance, holder, holder_subject, revision)
                         VALUES ($1, 0, $2, $3, $4) ON CONFLICT (account_id) DO UPDATE
                         SET holder = $2, holder_subject = $3, revision = $4
                         WHERE balances_v1.revision < $4",
                        &[&id, &name, &subject, &revision],
                    )
                    .await?;
            }
            Change::Closed(id) => {
                self.db.execute("DELETE FROM balances_v1 WHERE account_id = $1", &[&id]).await?;
            }
            Change::Erased(_) => {} // not in the category: see the type's documentation
        }
        Ok(())
    }

    /// Deposits and withdrawals in one transaction: each account's rows locked, the events
    /// past its revision summed, one upsert. A batch with rarer changes goes one by one.
    async fn apply_batch(&mut self, events: &[Envelope<AccountEvent>]) -> Result<(), HandlerError> {
        let mut amounts = Vec::with_capacity(events.len());
        for event in events {
            match change(event) {
                Some(Change::Amount(id, amount)) => amounts.push((id, amount, event.revision.0)),
                None => {}
                Some(_) => {
                    for event in events {
                        self.apply(event).await?;
                    }
                    return Ok(());
                }
            }
        }
        let tx = self.db.transaction().await?;
        let ids: Vec<&str> = amounts.iter().map(|(id, ..)| *id).collect();
        let rows = tx
            .query(
                "SELECT account_id, revision FROM balances_v1 WHERE account_id = ANY($1) FOR UPDATE",
                &[&ids],
            )
            .await?;
        let mut at: std::collections::BTreeMap<&str, (i64, i64)> = Default::default();
        for row in &rows {
            let id: &str = row.get(0);
            let stored = ids.iter().find(|known| **known == id).copied().unwrap_or_default();
            at.insert(stored, (0, row.get(1)));
        }
        for (id, amount, revision) in amounts {
            let revision = i64::try_from(revision)?;
            let (sum, last) = at.entry(id).or_insert((0, -1));
            if revision > *last {
                *sum += amount;
                *last = revision;
            }
        }
        let (ids, changes): (Vec<&str>, Vec<(i64, i64)>) = at.into_iter().unzip();
        let (sums, revisions): (Vec<i64>, Vec<i64>) = changes.into_iter().unzip();
        tx.execute(
            "INSERT INTO balances_v1 (account_id, balance, revision)
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[])
             ON CONFLICT (account_id) DO UPDATE
             SET balance = balances_v1.balance + EXCLUDED.balance, revision = EXCLUDED.revision
             WHERE balances_v1.revision < EXCLUDED.revision",
            &[&ids, &sums, &revisions],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
