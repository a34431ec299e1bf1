//! The rule every stored `data` and `metadata` keeps (shared/API.md, "Recorded event"): JSON
//! that every strict parser accepts. serde_json has already checked the syntax when it kept
//! the text as a `RawValue`; this one pass over the text checks what it lets through, and
//! re-encodes nothing, so what is stored is still exactly what was sent.

/// How deep arrays and objects may nest.
pub const JSON_DEPTH_MAX: usize = 64;

/// Why JSON text breaks the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StrictJsonError {
    /// Arrays and objects nest deeper than [`JSON_DEPTH_MAX`].
    #[error("nested deeper than {JSON_DEPTH_MAX} levels")]
    TooDeep,
    /// A `\u` escape names half of a surrogate pair without the other half.
    #[error("a lone surrogate escape (\\u{0:04x}) is not valid Unicode")]
    LoneSurrogate(u16),
}

/// Checks syntactically valid JSON `text` for what strict parsers refuse: nesting past
/// [`JSON_DEPTH_MAX`], and lone surrogate escapes (`"\ud800"`), in values and keys alike.
///
/// # Errors
/// [`StrictJsonError`] names the first problem.
pub fn check_strict(text: &str) -> Result<(), StrictJsonError> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'[' | b'{' => {
                depth += 1;
                if depth > JSON_DEPTH_MAX {
                    return Err(StrictJsonError::TooDeep);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'"' => index = string_end(bytes, index + 1)?,
            _ => {}
        }
        index += 1;
    }
    Ok(())
}

/// Scans a string whose text starts at `index` (after its opening quote); answers the index
/// of its closing quote.
fn string_end(bytes: &[u8], mut index: usize) -> Result<usize, StrictJsonError> {
    // A high surrogate escape waiting for its low half.
    let mut pending_high: Option<u16> = None;
    while index < bytes.len() {
        match bytes[index] {
            b'"' => break,
            b'\\' if bytes.get(index + 1) == Some(&b'u') => {
                let unit = hex4(bytes, index + 2);
                match (pending_high.take(), unit) {
                    (None, Some(high @ 0xD800..=0xDBFF)) => pending_high = Some(high),
                    (None, Some(low @ 0xDC00..=0xDFFF)) => {
                        return Err(StrictJsonError::LoneSurrogate(low));
                    }
                    (Some(_), Some(0xDC00..=0xDFFF)) => {}
                    (Some(high), _) => return Err(StrictJsonError::LoneSurrogate(high)),
                    (None, _) => {}
                }
                index += 6;
                continue;
            }
            b'\\' => index += 1, // the escaped character, whatever it is
            _ => {}
        }
        if let Some(high) = pending_high {
            return Err(StrictJsonError::LoneSurrogate(high));
        }
        index += 1;
    }
    match pending_high {
        Some(high) => Err(StrictJsonError::LoneSurrogate(high)),
        None => Ok(index),
    }
}

/// The four hex digits at `index` as a UTF-16 unit.
fn hex4(bytes: &[u8], index: usize) -> Option<u16> {
    let digits = std::str::from_utf8(bytes.get(index..index + 4)?).ok()?;
    u16::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lone_surrogates_are_refused_in_values_and_keys() {
        for bad in [
            r#""\ud800""#,
            r#""\uDBFF""#,
            r#""\udc00""#,
            r#"{"\ud800": 1}"#,
            r#"["a\ud800b"]"#,
            r#""\ud800\u0041""#,
            r#""\ud800\ud800""#,
            r#""\ud800\n""#,
        ] {
            assert!(matches!(check_strict(bad), Err(StrictJsonError::LoneSurrogate(_))), "{bad}");
        }
        for good in [r#""\ud83d\ude00""#, r#""\u00e9\\ud800""#, r#"{"k\"": "\\"}"#, r#""😀""#] {
            assert_eq!(check_strict(good), Ok(()), "{good}");
        }
    }

    #[test]
    fn nesting_is_limited_and_brackets_in_strings_do_not_count() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(check_strict(&deep(JSON_DEPTH_MAX)), Ok(()));
        assert_eq!(check_strict(&deep(JSON_DEPTH_MAX + 1)), Err(StrictJsonError::TooDeep));
        assert_eq!(check_strict(&deep(100_000)), Err(StrictJsonError::TooDeep));
        let in_string = format!("[\"{}\"]", "[{".repeat(200));
        assert_eq!(check_strict(&in_string), Ok(()));
    }

    proptest! {
        /// Whatever serde_json can read into a `Value` (its strict parse, depth limit 128
        /// aside) and is shallow enough, this check accepts too: it refuses nothing valid.
        #[test]
        fn it_accepts_what_a_strict_parser_accepts(text in r#"[\[\]{}",:a-z0-9\\u ]{0,40}|"(\\u[dD][89abAB][0-9a-f]{2}|\\u[dD][c-fC-F][0-9a-f]{2}|[a-z])*""#) {
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
                let depth_ok = depth(&value) <= JSON_DEPTH_MAX;
                prop_assert_eq!(check_strict(&text).is_ok(), depth_ok, "{}", text);
            }
        }

        /// Whatever it accepts, serde_json reads into a `Value` (what the SDK's upcasting does).
        #[test]
        fn what_it_accepts_a_strict_parser_reads(text in r#""(\\u[dD][89abAB][0-9a-f]{2}|\\u[dD][c-fC-F][0-9a-f]{2}|\\u00[4-7][0-9a-f]|[a-z])*""#) {
            let raw: Result<Box<serde_json::value::RawValue>, _> = serde_json::from_str(&text);
            if raw.is_ok() && check_strict(&text).is_ok() {
                prop_assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok(), "{}", text);
            }
        }
    }

    fn depth(value: &serde_json::Value) -> usize {
        match value {
            serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
}
