//! The `text/event-stream` encoding.
//!
//! Messages are written into one buffer per catch-up page or live batch and sent as one body
//! chunk. Measured: with one chunk per event (axum's `Sse`), catch-up spent its time in a
//! `write` and a task switch per event.

use crate::protocol::RecordedEvent;
use std::io::Write;

/// Sent first: how long a client waits before reconnecting.
pub const RETRY: &[u8] = b"retry: 1000\n\n";

/// Sent while idle, so that proxies and clients see the connection alive.
pub const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// Appends one event's message: no `event:` line, `id:` its position, `data:` the event.
pub fn event(out: &mut Vec<u8>, event: &RecordedEvent) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "id: {}\ndata: ", event.position);
    let start = out.len();
    serde_json::to_writer(&mut *out, event)
        .expect("a recorded event always serializes: its JSON parts are validated");
    continue_lines(out, start);
    out.extend_from_slice(b"\n\n");
}

/// Appends one message with `id:` the position and `data:` the JSON `value`.
pub fn event_json(
    out: &mut Vec<u8>,
    position: crate::protocol::Position,
    value: &serde_json::Value,
) {
    let _ = write!(out, "id: {position}\ndata: ");
    let start = out.len();
    serde_json::to_writer(&mut *out, value).expect("a JSON value serializes");
    continue_lines(out, start);
    out.extend_from_slice(b"\n\n");
}

/// Appends a named message (`caught-up`, `checkpoint`) with a JSON `data:` line.
pub fn named(out: &mut Vec<u8>, name: &str, data: &serde_json::Value) {
    let _ = write!(out, "event: {name}\ndata: {data}\n\n");
}

/// Serialized JSON is one line unless an event's data or metadata kept raw newlines as
/// whitespace. SSE ends a line at CR, LF or CRLF, so the text after each such line end
/// continues on a further `data:` line, which a client joins back with LF.
fn continue_lines(out: &mut Vec<u8>, start: usize) {
    if memchr::memchr2(b'\n', b'\r', &out[start..]).is_none() {
        return;
    }
    let text = out.split_off(start);
    let mut rest = &text[..];
    loop {
        let Some(end) = memchr::memchr2(b'\n', b'\r', rest) else {
            out.extend_from_slice(rest);
            return;
        };
        out.extend_from_slice(&rest[..end]);
        out.extend_from_slice(b"\ndata: ");
        let crlf = rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n');
        rest = &rest[end + if crlf { 2 } else { 1 }..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(data: &str) -> String {
        let event: RecordedEvent = serde_json::from_value(serde_json::json!({
            "position": 7, "stream": "s-1", "revision": 0,
            "id": "5f0c6d0e-9a39-4c41-a9a0-1f6b0f0f6f11", "type": "T", "schema_version": 1,
            "data": null, "metadata": null, "recorded_at": "2026-11-27T12:00:00.000001Z"
        }))
        .unwrap();
        let event = RecordedEvent {
            data: serde_json::value::RawValue::from_string(data.into()).unwrap(),
            ..event
        };
        let mut out = Vec::new();
        super::event(&mut out, &event);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn an_event_is_an_id_line_and_one_data_line() {
        let text = encode(r#"{"a":"x\ny"}"#);
        assert!(text.starts_with("id: 7\ndata: {\"position\":7,"), "{text}");
        assert!(text.ends_with("}\n\n"));
        assert_eq!(text.matches('\n').count(), 3, "{text}");
    }

    #[test]
    fn raw_newlines_continue_on_data_lines_that_join_back() {
        let text = encode("{\"a\":\n1,\r\n\"b\":\r2}");
        assert!(!text.trim_end().contains("\n\n"), "no blank line inside the message: {text:?}");
        let joined: Vec<&str> =
            text.lines().filter_map(|line| line.strip_prefix("data: ")).collect();
        let data: serde_json::Value = serde_json::from_str(&joined.join("\n")).unwrap();
        assert_eq!(data["data"], serde_json::json!({"a": 1, "b": 2}));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            "\\PC{0,12}|[\\n\\r\"\\\\]{0,3}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("\\PC{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn parse(bytes: Vec<u8>) -> Vec<eventsource_stream::Event> {
        use eventsource_stream::Eventsource;
        use futures::StreamExt;
        let body = futures::stream::iter([Ok::<_, std::convert::Infallible>(bytes)]);
        futures::executor::block_on(body.eventsource().collect::<Vec<_>>())
            .into_iter()
            .map(|e| e.expect("well-formed"))
            .collect()
    }

    proptest! {
        #[test]
        fn any_event_data_round_trips_through_an_sse_parser(data in json(), line_end in "\n|\r\n|\r", pretty: bool) {
            let text = if pretty { serde_json::to_string_pretty(&data).unwrap() } else { serde_json::to_string(&data).unwrap() };
            let text = text.replace('\n', &line_end);
            let event: RecordedEvent = serde_json::from_value(serde_json::json!({
                "position": 9, "stream": "s-1", "revision": 0,
                "id": "5f0c6d0e-9a39-4c41-a9a0-1f6b0f0f6f11", "type": "T", "schema_version": 1,
                "data": null, "metadata": null, "recorded_at": "2026-11-27T12:00:00.000001Z"
            })).unwrap();
            let event = RecordedEvent { data: serde_json::value::RawValue::from_string(text).unwrap(), ..event };
            let mut out = Vec::new();
            super::event(&mut out, &event);
            out.extend_from_slice(KEEPALIVE);
            let parsed = parse(out);
            prop_assert_eq!(parsed.len(), 1);
            prop_assert_eq!(&parsed[0].id, "9");
            // The exact text comes back; only CR and CRLF whitespace become LF, as every SSE
            // client joins continued data lines with LF.
            let received: RecordedEvent = serde_json::from_str(&parsed[0].data).unwrap();
            let expected = event.data.get().replace("\r\n", "\n").replace('\r', "\n");
            prop_assert_eq!(received.data.get(), expected.as_str());
        }
    }
}
