//! The projection SDK: what separate processes use to write to and read from a store
//! server. For now it carries the wire types; the client, aggregate helper, upcasters and
//! projection runner follow.

#![warn(missing_docs)]

/// The wire contract of the store server's HTTP API (shared/API.md), defined once in
/// `store-server` and built here without any server dependency.
pub use store_server::protocol;
