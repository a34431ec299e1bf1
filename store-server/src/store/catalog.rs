//! The catalog both backends keep and list: what a commit adds to the counts, and the
//! shapes of a listing.

use super::rows::{StreamRow, to_u64};
use super::{Error, StreamPattern};
use crate::decide::Decision;
use crate::protocol::{CategoryInfo, Listing, SchemaVersion, StreamInfo, TypeInfo};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A page of a catalog listing, by name.
#[derive(Debug, Clone)]
pub struct CatalogQuery {
    /// Only names starting with this (streams only).
    pub prefix: Option<String>,
    /// Only names after this one.
    pub after: Option<String>,
    /// At most this many.
    pub limit: usize,
    /// Only streams these patterns cover, and their categories; `None`: everything.
    pub scope: Option<Arc<[StreamPattern]>>,
}

/// The names starting with `prefix`, as a range in byte order: `[prefix, end)`, `end` being
/// `None` when nothing bounds it. UTF-8 keeps code point order, so the least string above
/// every one starting with `prefix` is `prefix` with its last character raised by one.
pub(super) fn prefix_range(prefix: &str) -> (String, Option<String>) {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return (prefix.to_owned(), Some(chars.into_iter().collect()));
        }
    }
    (prefix.to_owned(), None)
}

/// What one commit adds to the counts, sorted (so that every writer updates the rows in one
/// order): per category, streams created and events written; per type and schema version,
/// events written.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Counts<'a> {
    pub categories: Vec<(&'a str, i64, i64)>,
    pub types: Vec<(&'a str, i32, i64)>,
}

pub(super) fn counts<'a>(decision: &'a Decision<'a>) -> Counts<'a> {
    let mut categories: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    let mut types: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for row in &decision.rows {
        categories.entry(row.stream.category()).or_default().1 += 1;
        let version = i32::try_from(row.event.schema_version.get()).unwrap_or(i32::MAX);
        *types.entry((row.event.event_type.as_str(), version)).or_default() += 1;
    }
    for stream in &decision.created {
        categories.entry(stream.category()).or_default().0 += 1;
    }
    Counts {
        categories: categories.into_iter().map(|(c, (s, e))| (c, s, e)).collect(),
        types: types.into_iter().map(|((t, v), e)| (t, v, e)).collect(),
    }
}

/// A listing of at most `limit` of `entries` (read one more than `limit`): `next` is the
/// last name of the page when more follow.
pub(super) fn page<T>(
    mut entries: Vec<T>,
    limit: usize,
    name: impl Fn(&T) -> String,
) -> Listing<T> {
    let more = entries.len() > limit;
    entries.truncate(limit);
    let next = match more {
        true => entries.last().map(name),
        false => None,
    };
    Listing { entries, next }
}

/// The streams of a `GET /streams` page, from their rows.
pub(super) fn streams(rows: Vec<StreamRow>, limit: usize) -> Result<Listing<StreamInfo>, Error> {
    let streams = rows
        .into_iter()
        .map(|row| {
            let (name, state) = row.into_state()?;
            Ok(StreamInfo { name, revision: state.revision, deleted: state.deleted })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(page(streams, limit, |s| s.name.to_string()))
}

/// The categories of a `GET /categories` page, from `(category, streams, events)` rows.
pub(super) fn categories(
    rows: Vec<(String, i64, i64)>,
    limit: usize,
) -> Result<Listing<CategoryInfo>, Error> {
    let categories = rows
        .into_iter()
        .map(|(name, streams, events)| {
            let streams = to_u64(streams, 0, "category streams")?;
            Ok(CategoryInfo { name, streams, events: to_u64(events, 0, "category events")? })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(page(categories, limit, |c| c.name.clone()))
}

/// The categories a scoped token sees: those of the streams in its scope (`names`, in
/// order), after `after`, at most `limit + 1`, each with how many of its streams it sees.
pub(super) fn scoped_categories(
    names: &[String],
    after: Option<&str>,
    limit: usize,
) -> Vec<(String, u64)> {
    let mut streams: BTreeMap<&str, u64> = BTreeMap::new();
    for name in names {
        let category = name.split_once('-').map_or(name.as_str(), |(c, _)| c);
        if after.is_none_or(|after| category > after) {
            *streams.entry(category).or_default() += 1;
        }
    }
    streams.into_iter().take(limit + 1).map(|(c, n)| (c.to_owned(), n)).collect()
}

/// The types of a `GET /types` page, from `(type, schema_version, events)` rows of at most
/// `limit + 1` types, ordered by type.
pub(super) fn types(
    rows: Vec<(String, i32, i64)>,
    limit: usize,
) -> Result<Listing<TypeInfo>, Error> {
    let mut types: Vec<TypeInfo> = Vec::new();
    for (name, version, events) in rows {
        let corrupt = || Error::Corrupt { position: 0, why: format!("type {name}: counts") };
        let version =
            u32::try_from(version).ok().and_then(SchemaVersion::new).ok_or_else(corrupt)?;
        let events = to_u64(events, 0, "type events")?;
        match types.last_mut().filter(|t| t.name == name) {
            Some(info) => {
                info.events += events;
                info.schema_versions.push(version);
            }
            None => types.push(TypeInfo { name, events, schema_versions: vec![version] }),
        }
    }
    Ok(page(types, limit, |t| t.name.clone()))
}

/// What imported events add to the counts (streams come with the state).
pub(super) fn counts_of_events(events: &[super::export::StoredEvent]) -> Counts<'_> {
    let mut categories: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    let mut types: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for event in events {
        let category = event.stream.split_once('-').map_or(event.stream.as_str(), |(c, _)| c);
        categories.entry(category).or_default().1 += 1;
        let version = i32::try_from(event.schema_version).unwrap_or(i32::MAX);
        *types.entry((event.event_type.as_str(), version)).or_default() += 1;
    }
    Counts {
        categories: categories.into_iter().map(|(c, (s, e))| (c, s, e)).collect(),
        types: types.into_iter().map(|((t, v), e)| (t, v, e)).collect(),
    }
}

/// What imported streams add to the counts.
pub(super) fn counts_of_streams<'a>(
    streams: impl IntoIterator<Item = &'a super::export::StoredStream>,
) -> Counts<'a> {
    let mut categories: BTreeMap<&str, i64> = BTreeMap::new();
    for stream in streams {
        *categories.entry(category_of(&stream.name)).or_default() += 1;
    }
    Counts {
        categories: categories.into_iter().map(|(c, n)| (c, n, 0)).collect(),
        types: Vec::new(),
    }
}

/// The category of a stream named `name`, as `StreamName::category` says, for a name read
/// from storage.
pub(super) fn category_of(name: &str) -> &str {
    name.split_once('-').map_or(name, |(category, _)| category)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_holds_exactly_the_names_starting_with_it() {
        assert_eq!(prefix_range("account-"), ("account-".into(), Some("account.".into())));
        assert_eq!(prefix_range("é"), ("é".into(), Some("ê".into())));
        let (low, high) = prefix_range("a\u{10FFFF}");
        assert_eq!(high.as_deref(), Some("b"));
        for name in ["a\u{10FFFF}", "a\u{10FFFF}x"] {
            assert!(name >= low.as_str() && name < high.as_deref().unwrap());
        }
        assert_eq!(prefix_range("\u{10FFFF}").1, None);
        // Surrogates are no characters: the next one after U+D7FF is U+E000.
        assert_eq!(prefix_range("\u{D7FF}").1.as_deref(), Some("\u{E000}"));
    }
}
