//! Personal data in storage, shared by both backends: sealing a batch's events under their
//! subjects' keys inside the commit, opening them in reads, and which key file a store's
//! subject keys are wrapped by. Events without a data subject never come here.

use super::Error;
use super::rows::to_u64;
use crate::crypto::{KeyId, MasterKey, SubjectKey};
use crate::decide::{Decision, SubjectState};
use crate::protocol::{DataSubject, Page, Position};
use std::collections::HashMap;

/// The columns of a [`SubjectRow`], in order.
pub(super) const SUBJECT_COLUMNS: &str = "subject, key_since, wrapped_key, master_key_id";

/// A `data_subjects` row as both backends read it.
pub(super) struct SubjectRow {
    pub subject: String,
    pub key_since: Option<i64>,
    pub wrapped_key: Option<Vec<u8>>,
    pub master_key_id: Option<Vec<u8>>,
}

impl SubjectRow {
    pub(super) fn state(&self) -> Result<(DataSubject, SubjectState), Error> {
        let subject = DataSubject::new(self.subject.clone())
            .map_err(|e| Error::Corrupt { position: 0, why: e.to_string() })?;
        let key_since = match self.key_since {
            Some(since) => Some(Position(to_u64(since, 0, "key_since")?)),
            None => None,
        };
        Ok((subject, SubjectState { key_since }))
    }

    /// The subject's live key, unwrapped.
    fn unwrap(&self, master: Option<&MasterKey>) -> Result<SubjectKey, Error> {
        let (Some(since), Some(wrapped)) = (self.key_since, self.wrapped_key.as_deref()) else {
            return Err(Error::Key(format!("data subject {} has no key", self.subject)));
        };
        let master = master.ok_or_else(|| {
            Error::Key("personal data needs the --encryption-key-file it was sealed under".into())
        })?;
        if self.master_key_id.as_deref() != Some(master.id().as_bytes()) {
            return Err(Error::Key(format!(
                "the key of data subject {} is wrapped by another key file",
                self.subject
            )));
        }
        master.unwrap(&self.subject, to_u64(since, 0, "key_since")?, wrapped).map_err(|_| {
            Error::Key(format!(
                "the key of data subject {} does not unwrap with the key file",
                self.subject
            ))
        })
    }
}

/// What a commit writes for personal data: each row's sealed data (`None` for events
/// without a subject), and the subjects whose keys were created or destroyed.
pub(super) struct Sealed<'a> {
    pub rows: Vec<Option<Vec<u8>>>,
    pub subjects: Vec<SubjectWrite<'a>>,
}

/// A `data_subjects` row to write: a new key, or (all `None`) a destroyed one.
pub(super) struct SubjectWrite<'a> {
    pub subject: &'a str,
    pub key_since: Option<i64>,
    pub wrapped_key: Option<Vec<u8>>,
    pub master_key_id: Option<Vec<u8>>,
}

/// Seals every row of `decision` that has a data subject, under the key the decision
/// chose: a live key from `stored`, or one created here. A key created and destroyed in
/// the same batch seals its rows and is never stored.
///
/// `encryption` is the store's `encryption` row, read in the commit when
/// [`creates_keys`] says so.
pub(super) fn seal<'a>(
    decision: &Decision<'a>,
    stored: &[SubjectRow],
    master: Option<&MasterKey>,
    encryption: Option<&EncryptionRow>,
) -> Result<Sealed<'a>, Error> {
    if creates_keys(decision) {
        may_create_keys(encryption, master)?;
    }
    let stored = by_subject(stored);
    let mut keys: HashMap<(&str, Position), SubjectKey> = HashMap::new();
    let mut subjects = Vec::with_capacity(decision.subjects.len());
    for &(subject, state) in &decision.subjects {
        let write = match state.key_since.filter(|&since| since >= decision.first_position) {
            Some(since) => {
                let master = master.ok_or_else(no_key_file)?;
                let (key, wrapped) = master.new_subject_key(subject.as_str(), since.0);
                keys.insert((subject.as_str(), since), key);
                SubjectWrite {
                    subject: subject.as_str(),
                    key_since: Some(super::to_i64(since.0)),
                    wrapped_key: Some(wrapped),
                    master_key_id: Some(master.id().as_bytes().to_vec()),
                }
            }
            None if state.key_since.is_some() => continue, // unchanged
            None => SubjectWrite {
                subject: subject.as_str(),
                key_since: None,
                wrapped_key: None,
                master_key_id: None,
            },
        };
        subjects.push(write);
    }
    let mut rows = Vec::with_capacity(decision.rows.len());
    for row in &decision.rows {
        let (Some(subject), Some(since)) = (row.event.data_subject.as_ref(), row.key_since) else {
            rows.push(None);
            continue;
        };
        let slot = (subject.as_str(), since);
        let key = match keys.entry(slot) {
            std::collections::hash_map::Entry::Occupied(known) => known.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                let key = if since >= decision.first_position {
                    // Created for this batch and destroyed later in it: used, never stored.
                    master.ok_or_else(no_key_file)?.new_subject_key(subject.as_str(), since.0).0
                } else {
                    let found = stored.get(subject.as_str());
                    found
                        .ok_or_else(|| Error::Key(format!("data subject {subject} has no key")))?
                        .unwrap(master)?
                };
                slot.insert(key)
            }
        };
        let data = row.event.data.get().as_bytes();
        rows.push(Some(key.seal_event(&row.id.0, row.position.0, data)));
    }
    Ok(Sealed { rows, subjects })
}

/// `rows` by subject, so that each event finds its subject's row at once.
fn by_subject(rows: &[SubjectRow]) -> HashMap<&str, &SubjectRow> {
    rows.iter().map(|row| (row.subject.as_str(), row)).collect()
}

fn no_key_file() -> Error {
    Error::Key("an event with a data subject reached storage without a key file".into())
}

/// A page whose events with a data subject still hold their sealed data.
pub(super) struct Unopened<C> {
    pub page: Page<C>,
    /// The index of each such event in the page, and its sealed data.
    pub sealed: Vec<(usize, Vec<u8>)>,
}

impl<C> Unopened<C> {
    /// The distinct data subjects whose keys opening needs; empty when there is nothing to do.
    pub(super) fn subjects(&self) -> Vec<String> {
        let mut subjects: Vec<String> = self
            .sealed
            .iter()
            .filter_map(|(index, _)| self.page.events[*index].data_subject.as_ref())
            .map(|s| s.as_str().to_owned())
            .collect();
        subjects.sort_unstable();
        subjects.dedup();
        subjects
    }

    /// Opens each sealed event with its subject's key in `stored`, read after the events:
    /// an event sealed before the subject's live key was created reads as erased.
    pub(super) fn open(
        mut self,
        stored: &[SubjectRow],
        master: Option<&MasterKey>,
    ) -> Result<Page<C>, Error> {
        let stored = by_subject(stored);
        let mut keys: HashMap<&str, SubjectKey> = HashMap::new();
        for (index, sealed) in self.sealed {
            let event = &mut self.page.events[index];
            let position = event.position;
            let subject = event.data_subject.as_ref().map_or("", |s| s.as_str());
            let live = stored.get(subject).copied().filter(|row| {
                row.key_since.is_some_and(|since| since <= super::to_i64(position.0))
            });
            // Sealed under a key since destroyed (or, were the row missing, under none).
            let Some(row) = live else {
                event.erase();
                continue;
            };
            if !keys.contains_key(row.subject.as_str()) {
                keys.insert(row.subject.as_str(), row.unwrap(master)?);
            }
            let key = &keys[row.subject.as_str()];
            let corrupt = |why: &str| Error::Corrupt {
                position: super::to_i64(position.0),
                why: format!("its sealed data {why}"),
            };
            let data = key
                .open_event(&event.id.0, position.0, &sealed)
                .map_err(|_| corrupt("does not open: damaged, or moved from another event"))?;
            let data = String::from_utf8(data).map_err(|_| corrupt("is not UTF-8"))?;
            event.data = serde_json::value::RawValue::from_string(data)
                .map_err(|_| corrupt("is not JSON"))?;
        }
        Ok(self.page)
    }
}

/// The `encryption` row: the master key the subject keys are wrapped by, and the one a key
/// rotation is moving them to.
pub(super) struct EncryptionRow {
    pub master_key_id: Vec<u8>,
    pub rotating_to: Option<Vec<u8>>,
}

/// What the store holds, for [`check`].
pub(super) struct KeyFacts {
    pub row: Option<EncryptionRow>,
    /// Whether any subject has a live key (looked up only for a server without a key file).
    pub live_keys: bool,
}

/// Whether a server may serve this store with `master`: `Ok(true)` when the store must
/// record `master`'s id as its key (the first start with one). Reads one row, and without a
/// key file whether a live key exists: no walk of the subjects at start-up.
pub(super) fn check(facts: &KeyFacts, master: Option<&MasterKey>) -> Result<bool, Error> {
    if facts.row.as_ref().is_some_and(|row| row.rotating_to.is_some()) {
        return Err(Error::Key(
            "a key rotation was interrupted: run `store-server key rotate` again with the same \
             --old and --new files"
                .into(),
        ));
    }
    let Some(master) = master else {
        return match facts.live_keys {
            false => Ok(false),
            true => Err(Error::Key(
                "the store holds personal data sealed under a key file: start with \
                 --encryption-key-file"
                    .into(),
            )),
        };
    };
    if let Some(row) = facts.row.as_ref().filter(|row| row.master_key_id != master.id().as_bytes())
    {
        return Err(Error::Key(format!(
            "the encryption key file is not the key this store's personal data is wrapped by \
             (the store's key id is {}, the file's {}); use the store's key file, or rotate \
             with `store-server key rotate`",
            hex::encode(&row.master_key_id),
            hex::encode(master.id().as_bytes())
        )));
    }
    Ok(facts.row.is_none())
}

/// Whether a commit may wrap new subject keys with `master`: only while it is the store's
/// key and no rotation runs, so that a server left running during a rotation cannot add
/// keys the rotation would miss (those appends get a 503 until it restarts).
pub(super) fn may_create_keys(
    row: Option<&EncryptionRow>,
    master: Option<&MasterKey>,
) -> Result<(), Error> {
    let master = master.ok_or_else(no_key_file)?;
    match row {
        Some(row) if row.rotating_to.is_none() && row.master_key_id == master.id().as_bytes() => {
            Ok(())
        }
        _ => Err(Error::Key(
            "the store's key is being rotated or is another key file: restart with the new one"
                .into(),
        )),
    }
}

/// Whether `decision` creates a subject key: only then does its commit read the
/// `encryption` row.
pub(super) fn creates_keys(decision: &Decision<'_>) -> bool {
    decision.rows.iter().any(|row| row.key_since.is_some_and(|s| s >= decision.first_position))
}

/// Where a rotation starts from, given the `encryption` row: `Err` when `old` is not the
/// store's key (and the rotation to `new` did not already begin or end).
pub(super) fn rotation_may_start(
    row: Option<&EncryptionRow>,
    old: &MasterKey,
    new: &MasterKey,
) -> Result<(), Error> {
    let Some(row) = row else { return Ok(()) };
    let (old_id, new_id) = (old.id(), new.id());
    let is = |bytes: &[u8], id: KeyId| bytes == id.as_bytes();
    if is(&row.master_key_id, old_id)
        || is(&row.master_key_id, new_id)
        || row.rotating_to.as_deref().is_some_and(|to| is(to, new_id))
    {
        return Ok(());
    }
    Err(Error::Key(format!(
        "the --old key file is not this store's key (the store's key id is {})",
        hex::encode(&row.master_key_id)
    )))
}

/// How many subject keys a rotation re-wraps in one transaction.
pub(super) const ROTATION_CHUNK: i64 = 500;

/// `row`'s key wrapped by `new` instead of `old`.
pub(super) fn rewrap(row: &SubjectRow, old: &MasterKey, new: &MasterKey) -> Result<Vec<u8>, Error> {
    let (Some(since), Some(wrapped)) = (row.key_since, row.wrapped_key.as_deref()) else {
        return Err(Error::Key(format!("data subject {} has no key to rotate", row.subject)));
    };
    old.rewrap(new, &row.subject, to_u64(since, 0, "key_since")?, wrapped).map_err(|_| {
        Error::Key(format!(
            "the key of data subject {} does not unwrap with the --old key file",
            row.subject
        ))
    })
}
