//! What the store holds, listed (API.md "Catalog"): streams, categories and event types, by
//! name, in pages.

use super::lifecycle::Deletion;
use super::names::{SchemaVersion, StreamName, StreamRevision};
use serde::{Deserialize, Serialize};

/// One stream of `GET /streams`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// Its name.
    #[serde(deserialize_with = "super::events::recorded_stream")]
    pub name: StreamName,
    /// Its last revision, system events included.
    pub revision: StreamRevision,
    /// Whether, and how, it is deleted.
    pub deleted: Option<Deletion>,
}

/// One category of `GET /categories`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryInfo {
    /// Its name.
    pub name: String,
    /// Streams of it ever written (deleted ones included: their names are listed too).
    pub streams: u64,
    /// Events of it stored, removed ones not.
    pub events: u64,
}

/// One event type of `GET /types`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeInfo {
    /// Its name.
    pub name: String,
    /// Events of it stored, removed ones not.
    pub events: u64,
    /// The schema versions those events have, ascending.
    pub schema_versions: Vec<SchemaVersion>,
}

/// A page of a catalog listing: `next` is the `after` of the next page (the last name of
/// this one), or `None` at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing<T> {
    /// The entries, by name in byte order.
    pub entries: Vec<T>,
    /// The `after` of the next page.
    pub next: Option<String>,
}

/// `GET /streams`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamList {
    /// The streams.
    pub streams: Vec<StreamInfo>,
    /// The `after` of the next page.
    pub next: Option<String>,
}

/// `GET /categories`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CategoryList {
    /// The categories.
    pub categories: Vec<CategoryInfo>,
    /// The `after` of the next page.
    pub next: Option<String>,
}

/// `GET /types`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TypeList {
    /// The types.
    pub types: Vec<TypeInfo>,
    /// The `after` of the next page.
    pub next: Option<String>,
}
