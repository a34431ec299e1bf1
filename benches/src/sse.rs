//! A lean reader of the server's SSE messages. The load generator shares two cores with the
//! server: a full SSE parser and a JSON parse per message (500,000 a second with 100
//! subscribers at 5,000 events/s) would measure the load generator, not the server.

use futures_util::{Stream, StreamExt};
use memchr::memmem;

/// Splits a response body into messages at blank lines (the server writes LF only).
pub struct Messages<S> {
    body: S,
    buffer: Vec<u8>,
    /// Where the next message starts, and where to look for its end.
    start: usize,
    scan: usize,
}

impl<S: Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin> Messages<S> {
    pub fn new(body: S) -> Self {
        Self { body, buffer: Vec::with_capacity(1 << 16), start: 0, scan: 0 }
    }

    /// The next message's text, without its blank line; `None` when the body ends.
    pub async fn next(&mut self) -> Option<&[u8]> {
        loop {
            if let Some(end) = memmem::find(&self.buffer[self.scan..], b"\n\n") {
                let (start, end) = (self.start, self.scan + end);
                self.start = end + 2;
                self.scan = self.start;
                return Some(&self.buffer[start..end]);
            }
            self.buffer.drain(..self.start);
            self.start = 0;
            // A blank line may straddle two chunks.
            self.scan = self.buffer.len().saturating_sub(1);
            let chunk = self.body.next().await?.ok()?;
            self.buffer.extend_from_slice(&chunk);
        }
    }
}

/// The value of a message's `name:` line.
pub fn field<'a>(message: &'a [u8], name: &str) -> Option<&'a [u8]> {
    message
        .split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(name.as_bytes())?.strip_prefix(b": "))
}

/// The number after `"key":` anywhere in the message.
pub fn number(message: &[u8], key: &str) -> Option<u64> {
    let at = memmem::find(message, format!("\"{key}\":").as_bytes())? + key.len() + 3;
    let digits = message[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&message[at..at + digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_split_at_blank_lines_across_chunks() {
        let chunks =
            ["retry: 1000\n\nid: 1\ndata: {\"a\":", "1,\"sent_us\":42}\n", "\nevent: x\n\n"];
        let body = futures_util::stream::iter(chunks.map(|c| Ok(bytes::Bytes::from(c))));
        let mut messages = Messages::new(body);
        assert_eq!(messages.next().await, Some(&b"retry: 1000"[..]));
        let message = messages.next().await.unwrap().to_vec();
        assert_eq!(field(&message, "id"), Some(&b"1"[..]));
        assert_eq!(number(&message, "sent_us"), Some(42));
        assert_eq!(field(messages.next().await.unwrap(), "event"), Some(&b"x"[..]));
        assert_eq!(messages.next().await, None);
    }
}
