//! The store server: an append-only event store over HTTP.
//!
//! Writers append events to streams with optimistic concurrency; every append is
//! acknowledged only once durable. Readers read by stream, category or the whole log.
//!
//! # Layout
//!
//! | module | concern |
//! | --- | --- |
//! | [`protocol`] | the wire types of shared/API.md, shared with the SDK (no server dependencies) |
//! | `config` | flags and environment variables, parsed once into a validated `Config` |
//! | `server` | `run(listener, config, shutdown)`, the one entry point |
//! | `listen` | the accept loop: TLS, connection and header limits, graceful shutdown |
//! | `http` | the routes and who may call each, one file per resource; `problem.rs` turns errors into problem documents |
//! | `decide` | the decision model: appends (over one stream or several, with checks and conditions), deletions and retention changes, and how a batch of them is decided; what retention keeps (pure) |
//! | `crypto` | the keys of crypto-shredding: the key file's master key wraps each data subject's key, which seals its events' data |
//! | `append` | the write path: the writer's queue and group commit |
//! | `scavenger` | removes what retention gives up, in steps the writer runs between commits |
//! | `store` | the backend trait, `sqlite/`, `postgres/`, shared row checks and SQL, migrations |
//! | `subscriptions` | live delivery: the tailer and its broadcast (`Hub`), one follower per SSE connection |
//! | `groups` | consumer groups: the pure changes of a group's state (`state`, `balance`), one session per member, the coordinator's sweep |
//! | `metrics` | the Prometheus registry |
//! | `auth` | bearer tokens from the auth file: roles and stream scopes |
//! | `tools` | operators' commands on a store's export: `verify` (invariants, digests) and `copy` (a live copy into other storage) |
//!
//! The write path, end to end: `http/append.rs` (`stream`, `several`) → `append::Writer::append`
//! (queue) → the writer task batches → `Store::commit` (one transaction: lock, snapshot,
//! `decide::decide`, insert) → each request gets its own outcome.
//!
//! Modules import downward only, in this order (a test keeps it so): `protocol`, `decide`,
//! `crypto`, `store`, `metrics`, `append`, `scavenger`, `subscriptions`, `groups`, `auth`, `http`, `listen`,
//! `config`, `server`, `tools`.
//!
//! Build with `default-features = false` for [`protocol`] alone.

pub mod protocol;

#[cfg(feature = "server")]
pub mod append;
#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod crypto;
#[cfg(feature = "server")]
pub mod decide;
#[cfg(feature = "server")]
pub mod groups;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod listen;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod scavenger;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod subscriptions;
#[cfg(feature = "server")]
pub mod tools;

/// An error and its sources on one line, for logs (never for clients).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
