//! Operators' commands beside serving, on a store's export: `verify` checks a store's
//! invariants and digests it, `copy` copies a running server's store into new storage and
//! keeps it in step. Both read from storage or from a running server (`remote`).

pub mod copy;
pub mod remote;
pub mod verify;
