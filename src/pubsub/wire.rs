//! The wire protocol: JSON text messages, one per WebSocket text frame.
//!
//! Client to server:
//!
//! ```json
//! {"type":"subscribe","topic":"t"}                                     live only
//! {"type":"subscribe","topic":"t","from":{"epoch":"E","offset":41}}    resume after 41
//! {"type":"subscribe","topic":"t","from":{"offset":0}}                 from the beginning
//! {"type":"unsubscribe","topic":"t"}
//! {"type":"publish","topic":"t","data":"...","id":"optional client id"}
//! ```
//!
//! Server to client:
//!
//! ```json
//! {"type":"subscribed","topic":"t","epoch":"E","offset":N,"recovered":true,"earliest":F}
//! {"type":"message","topic":"t","epoch":"E","offset":42,"data":"..."}
//! {"type":"ack","id":"...","topic":"t","offset":42}
//! {"type":"unsubscribed","topic":"t"}
//! {"type":"error","code":"...","message":"...","topic":"t","id":"..."}
//! ```
//!
//! `offset` in `subscribed` is the topic's last offset when the subscription began; `earliest`
//! the oldest still held. Fields a client does not know are to be ignored, so the protocol can
//! grow compatibly. Error codes: `bad_json`, `bad_message` (valid JSON, not a known message),
//! `bad_topic`, `too_large`, `too_many_topics`, `too_many_subscriptions`, `not_subscribed`,
//! `overloaded` (the log's queue is full: publish again later), `unavailable` (pub/sub does
//! not run under this server's model), `storage` (the log could not be written: not stored),
//! `gap` (messages between `from` and `to` are no longer held and were skipped).

use std::borrow::Cow;

use serde::Deserialize;

/// Where a subscription starts.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct From<'a> {
    /// The epoch the client's offset belongs to (absent: any, which only `offset: 0` means).
    #[serde(borrow, default)]
    pub epoch: Option<Cow<'a, str>>,
    /// The last offset the client has; it wants the ones after it.
    pub offset: u64,
}

/// A message from a client.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientMessage<'a> {
    /// Start receiving a topic's messages.
    Subscribe {
        /// The topic.
        #[serde(borrow)]
        topic: Cow<'a, str>,
        /// Where to start; absent: live only.
        #[serde(borrow, default)]
        from: Option<From<'a>>,
    },
    /// Stop receiving a topic's messages.
    Unsubscribe {
        /// The topic.
        #[serde(borrow)]
        topic: Cow<'a, str>,
    },
    /// Publish a message to a topic.
    Publish {
        /// The topic.
        #[serde(borrow)]
        topic: Cow<'a, str>,
        /// The message.
        #[serde(borrow)]
        data: Cow<'a, str>,
        /// The publisher's id for it, so that a retry is not stored twice.
        #[serde(borrow, default)]
        id: Option<Cow<'a, str>>,
    },
}

/// Why a client's message was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not JSON.
    BadJson,
    /// JSON, but not a message of this protocol.
    BadMessage,
}

/// Reads a client's message.
pub fn parse(text: &str) -> Result<ClientMessage<'_>, Refusal> {
    serde_json::from_str(text).map_err(|error| match error.classify() {
        serde_json::error::Category::Data => Refusal::BadMessage,
        _ => Refusal::BadJson,
    })
}

/// The epoch as the wire spells it: 16 hex digits.
pub fn epoch_text(epoch: u64) -> String {
    format!("{epoch:016x}")
}

/// Reads an epoch spelled by [`epoch_text`].
pub fn parse_epoch(text: &str) -> Option<u64> {
    (text.len() == 16)
        .then(|| u64::from_str_radix(text, 16).ok())
        .flatten()
}

/// Appends `text` as a JSON string (quotes and escapes).
pub fn push_json_string(out: &mut String, text: &str) {
    // serde_json's own escaping, written straight into `out`.
    let mut bytes = std::mem::take(out).into_bytes();
    let _ = serde_json::to_writer(&mut bytes, text);
    *out = String::from_utf8(bytes).unwrap_or_default();
}

/// `{"type":"message",...}` for a message.
pub fn message(topic: &str, epoch: u64, offset: u64, data: &str) -> String {
    let mut out = String::with_capacity(64 + topic.len() + data.len());
    out.push_str(r#"{"type":"message","topic":"#);
    push_json_string(&mut out, topic);
    out.push_str(r#","epoch":""#);
    out.push_str(&epoch_text(epoch));
    out.push_str(r#"","offset":"#);
    out.push_str(&offset.to_string());
    out.push_str(r#","data":"#);
    push_json_string(&mut out, data);
    out.push('}');
    out
}

/// `{"type":"ack",...}` for a stored publish.
pub fn ack(id: Option<&str>, topic: &str, offset: u64) -> String {
    let mut out = String::with_capacity(48 + topic.len());
    out.push_str(r#"{"type":"ack","#);
    if let Some(id) = id {
        out.push_str(r#""id":"#);
        push_json_string(&mut out, id);
        out.push(',');
    }
    out.push_str(r#""topic":"#);
    push_json_string(&mut out, topic);
    out.push_str(r#","offset":"#);
    out.push_str(&offset.to_string());
    out.push('}');
    out
}

/// `{"type":"subscribed",...}`.
pub fn subscribed(topic: &str, epoch: u64, offset: u64, recovered: bool, earliest: u64) -> String {
    let mut out = String::with_capacity(96 + topic.len());
    out.push_str(r#"{"type":"subscribed","topic":"#);
    push_json_string(&mut out, topic);
    out.push_str(&format!(
        r#","epoch":"{}","offset":{offset},"recovered":{recovered},"earliest":{earliest}}}"#,
        epoch_text(epoch)
    ));
    out
}

/// `{"type":"unsubscribed",...}`.
pub fn unsubscribed(topic: &str) -> String {
    let mut out = String::from(r#"{"type":"unsubscribed","topic":"#);
    push_json_string(&mut out, topic);
    out.push('}');
    out
}

/// `{"type":"error",...}`, with the topic, the publish id or a gap's bounds when they apply.
pub fn error(code: &str, message: &str, topic: Option<&str>, id: Option<&str>) -> String {
    let mut out = String::from(r#"{"type":"error","code":"#);
    push_json_string(&mut out, code);
    out.push_str(r#","message":"#);
    push_json_string(&mut out, message);
    if let Some(topic) = topic {
        out.push_str(r#","topic":"#);
        push_json_string(&mut out, topic);
    }
    if let Some(id) = id {
        out.push_str(r#","id":"#);
        push_json_string(&mut out, id);
    }
    out.push('}');
    out
}

/// `{"type":"error","code":"gap",...}`: messages `from..=to` were skipped, no longer held.
pub fn gap(topic: &str, from: u64, to: u64) -> String {
    let mut out = error(
        "gap",
        "messages no longer held were skipped",
        Some(topic),
        None,
    );
    out.pop();
    out.push_str(&format!(r#","from":{from},"to":{to}}}"#));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_parse_and_bad_ones_are_told_apart() {
        assert_eq!(
            parse(
                r#"{"type":"subscribe","topic":"t","from":{"epoch":"00000000000000ff","offset":41}}"#
            ),
            Ok(ClientMessage::Subscribe {
                topic: "t".into(),
                from: Some(From {
                    epoch: Some("00000000000000ff".into()),
                    offset: 41
                })
            })
        );
        assert_eq!(
            parse(r#"{"type":"publish","topic":"t","data":"a\"b","extra":1}"#),
            Ok(ClientMessage::Publish {
                topic: "t".into(),
                data: "a\"b".into(),
                id: None
            })
        );
        assert_eq!(parse("{nope"), Err(Refusal::BadJson));
        assert_eq!(parse(r#"{"type":"shout"}"#), Err(Refusal::BadMessage));
        assert_eq!(
            parse(r#"{"type":"publish","topic":"t"}"#),
            Err(Refusal::BadMessage)
        );
        assert_eq!(parse(r#"[1,2]"#), Err(Refusal::BadMessage));
    }

    #[test]
    fn server_messages_are_json() {
        let lines = [
            message("t\"x", 255, 42, "hi\n"),
            ack(Some("a"), "t", 3),
            ack(None, "t", 3),
            subscribed("t", 1, 0, true, 1),
            error("bad_json", "no", Some("t"), Some("i")),
            gap("t", 3, 9),
            unsubscribed("t"),
        ];
        for line in lines {
            let value: serde_json::Value = serde_json::from_str(&line).expect(&line);
            assert!(value["type"].is_string(), "{line}");
        }
        let value: serde_json::Value =
            serde_json::from_str(&message("t", 255, 42, "d")).expect("json");
        assert_eq!(value["epoch"], "00000000000000ff");
        assert_eq!(value["offset"], 42);
        assert_eq!(parse_epoch("00000000000000ff"), Some(255));
    }
}
