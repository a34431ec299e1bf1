//! The bank account of the seed tutorial, as separate processes around a store server:
//! `accounts` (the command side), `balances` (a read model in PostgreSQL), `bank-demo`.
//! This library is what they share: the events, the aggregate, the projection.

use projection_sdk::protocol::{Category, EventType, StreamName};
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

/// The read model: one balance per account, in table `balances_v1`.
pub struct Balances;

#[async_trait::async_trait]
impl Projection for Balances {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "balances"
    }

    fn target(&self) -> Target {
        let category = Category::new("account").expect("a valid category");
        let types = ["Deposited", "Withdrawn"].map(|t| EventType::new(t).expect("valid types"));
        Target::Category { category, types: types.to_vec() }
    }

    async fn setup(&self, tx: &Transaction<'_>) -> Result<(), HandlerError> {
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS balances_v1 (
                 account_id text   PRIMARY KEY,
                 balance    bigint NOT NULL
             )",
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

    /// Sums the batch's changes per account and writes them in two statements: the rows of
    /// accounts deleted in the batch go, then the changes made since are added.
    async fn apply_batch(
        &self,
        tx: &Transaction<'_>,
        events: &[Envelope<AccountEvent>],
    ) -> Result<(), HandlerError> {
        let mut deleted: std::collections::BTreeSet<&str> = Default::default();
        let mut changes: std::collections::BTreeMap<&str, i64> = Default::default();
        for event in events {
            let account_id = event.stream.as_str().strip_prefix("account-").unwrap_or_default();
            let change = match &event.event {
                Recorded::Event(AccountEvent::Deposited { amount, .. }) => *amount,
                Recorded::Event(AccountEvent::Withdrawn { amount }) => -amount,
                // A closed account's row goes; a recreated one starts again from nothing.
                Recorded::StreamDeleted(_) => {
                    deleted.insert(account_id);
                    changes.remove(account_id);
                    continue;
                }
                // A truncated stream keeps its balance: it was built from the events before.
                _ => continue,
            };
            *changes.entry(account_id).or_default() += change;
        }
        let deleted: Vec<&str> = deleted.into_iter().collect();
        let (ids, amounts): (Vec<&str>, Vec<i64>) = changes.into_iter().unzip();
        if !deleted.is_empty() {
            tx.execute("DELETE FROM balances_v1 WHERE account_id = ANY($1)", &[&deleted]).await?;
        }
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
