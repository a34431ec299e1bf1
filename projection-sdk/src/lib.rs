#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod aggregate;
mod client;
pub mod events;
mod projection;
mod subscription;

/// The wire contract of the store server's HTTP API (shared/API.md), defined once in
/// `store-server` and built here without any server dependency.
pub use store_server::protocol;

pub use aggregate::{ATTEMPTS_DEFAULT, Aggregate, CommandHandler, ExecuteError};
pub use client::{Client, Error};
pub use events::{EventError, UpcastError, Upcasters};
pub use projection::{
    DeadLetter, Envelope, Handler, HandlerError, OnFailure, Options, Projection, RunError, Runner,
    ServerRunner,
};
pub use subscription::{Message, Subscription, Target};
