#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod aggregate;
mod backoff;
mod client;
mod decision;
pub mod events;
mod projection;
mod subscription;

/// The wire contract of the store server's HTTP API (shared/API.md), defined once in
/// `store-server` and built here without any server dependency.
pub use store_server::protocol;

pub use aggregate::{ATTEMPTS_DEFAULT, Aggregate, CommandHandler, ExecuteError};
pub use backoff::Backoff;
pub use client::{
    CatalogPage, Client, Error, Export, LogRead, REQUEST_TIMEOUT_DEFAULT, RETRY_BACKOFF_DEFAULT,
    RETRY_TOTAL_DEFAULT, Read, StreamRead,
};
pub use decision::{DecisionHandler, DecisionModel};
pub use events::{EventError, UpcastError, Upcasters};
pub use projection::{
    BATCH_EVENTS_MAX_DEFAULT, DeadLetter, Envelope, Erased, GroupHandler, GroupRunner,
    GroupRunnerOptions, HANDLER_RETRY_DEFAULT, Handler, HandlerError, InGroup, InPostgres,
    OnFailure, OnServer, Options, Projection, Recorded, RunError, Runner, RunnerOptions,
    ServerRunner, ServerRunnerOptions,
};
pub use subscription::{GroupMessage, GroupSubscription, Message, Subscription, Target};
