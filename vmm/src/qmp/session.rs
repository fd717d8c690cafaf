//! One client's side of the protocol, without its socket: JSON values
//! framed out of the bytes it sends, the capabilities negotiation, and the
//! replies the monitor gives itself. What the VM must answer becomes a
//! [`Step::Command`] for the main loop. The reader thread runs it over a
//! socket; the QMP fuzzer (`fuzz/fuzz_targets/qmp.rs`) runs it over bytes.

use super::QmpError;
use serde_json::{json, Map, Value};

/// The most bytes one message may take before it is complete.
pub const MAX_MESSAGE: usize = 1 << 20;

/// What a client's next message asks of the monitor.
#[derive(Debug)]
pub enum Step {
    /// A reply the session gives itself (a malformed message, a command
    /// before negotiation).
    Reply(String),
    /// `qmp_capabilities` succeeded: its reply; events go to the client
    /// from now on.
    Negotiated(String),
    /// A command for the VM, with the client's `id`.
    Command {
        command: String,
        args: Map<String, Value>,
        id: Option<Value>,
    },
}

/// A client's unframed bytes and whether it negotiated.
#[derive(Default)]
pub struct Session {
    buf: Vec<u8>,
    negotiated: bool,
}

impl Session {
    /// Takes bytes the client sent. A message that grows past
    /// [`MAX_MESSAGE`] is dropped, and its error reply returned.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<String> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > MAX_MESSAGE {
            self.buf.clear();
            return Some(error_reply(&QmpError::generic("message too large"), None));
        }
        None
    }

    /// Bytes waiting for the rest of their message.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message's step; `None` until more bytes come.
    pub fn next_step(&mut self) -> Option<Step> {
        let msg = match next_value(&mut self.buf) {
            Framed::NeedMore => return None,
            Framed::Bad(e) => return Some(Step::Reply(error_reply(&QmpError::generic(e), None))),
            Framed::Value(v) => v,
        };
        let id = msg.get("id").cloned();
        let step = match parse_command(&msg) {
            Err(e) => Step::Reply(error_reply(&e, id)),
            Ok((cmd, _)) if cmd == "qmp_capabilities" && self.negotiated => {
                Step::Reply(error_reply(
                    &QmpError::not_found(
                        "Capabilities negotiation is already complete, command ignored",
                    ),
                    id,
                ))
            }
            Ok((cmd, _)) if cmd == "qmp_capabilities" => {
                self.negotiated = true;
                Step::Negotiated(reply_line(Ok(json!({})), id))
            }
            Ok(_) if !self.negotiated => Step::Reply(error_reply(
                &QmpError::not_found("Expecting capabilities negotiation with 'qmp_capabilities'"),
                id,
            )),
            Ok((command, args)) => Step::Command { command, args, id },
        };
        Some(step)
    }
}

/// The reply line to a command with `id`: `{"return": ...}` or
/// `{"error": ...}`.
pub fn reply_line(result: Result<Value, QmpError>, id: Option<Value>) -> String {
    match result {
        Ok(v) => {
            let mut o = json!({"return": v});
            if let Some(id) = id {
                o["id"] = id;
            }
            o.to_string()
        }
        Err(e) => error_reply(&e, id),
    }
}

/// Splits complete JSON values off the front of `buf`.
enum Framed {
    Value(Value),
    Bad(String),
    NeedMore,
}

fn next_value(buf: &mut Vec<u8>) -> Framed {
    let start = buf
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(buf.len());
    buf.drain(..start);
    if buf.is_empty() {
        return Framed::NeedMore;
    }
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
    match it.next() {
        Some(Ok(v)) => {
            let used = it.byte_offset();
            buf.drain(..used);
            Framed::Value(v)
        }
        Some(Err(e)) if e.is_eof() => Framed::NeedMore,
        Some(Err(e)) => {
            // Resynchronise at the next line.
            let cut = buf
                .iter()
                .position(|b| *b == b'\n')
                .map_or(buf.len(), |p| p + 1);
            buf.drain(..cut);
            Framed::Bad(format!("JSON parse error, {e}"))
        }
        None => Framed::NeedMore,
    }
}

pub(super) fn error_reply(e: &QmpError, id: Option<Value>) -> String {
    let mut o = json!({"error": {"class": e.class, "desc": e.desc}});
    if let Some(id) = id {
        o["id"] = id;
    }
    o.to_string()
}

/// `{"execute": NAME, "arguments": {...}}` → (NAME, arguments).
fn parse_command(msg: &Value) -> Result<(String, Map<String, Value>), QmpError> {
    let obj = msg
        .as_object()
        .ok_or_else(|| QmpError::generic("QMP input must be a JSON object"))?;
    let cmd = match obj.get("execute") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(QmpError::generic(
                "QMP input member 'execute' must be a string",
            ))
        }
        None => return Err(QmpError::generic("QMP input lacks member 'execute'")),
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "execute" | "arguments" | "id"))
    {
        return Err(QmpError::generic(format!(
            "QMP input member '{k}' is unexpected"
        )));
    }
    let args = match obj.get("arguments") {
        None => serde_json::Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return Err(QmpError::generic(
                "QMP input member 'arguments' must be an object",
            ))
        }
    };
    Ok((cmd, args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_handles_split_joined_and_bad_input() {
        let mut b = br#"{"execute": "a"}{"execute""#.to_vec();
        assert!(matches!(next_value(&mut b), Framed::Value(v) if v["execute"] == "a"));
        assert!(matches!(next_value(&mut b), Framed::NeedMore));
        b.extend_from_slice(br#": "b"}"#);
        assert!(matches!(next_value(&mut b), Framed::Value(v) if v["execute"] == "b"));
        let mut b = b"{oops\n{\"execute\": \"c\"}".to_vec();
        assert!(matches!(next_value(&mut b), Framed::Bad(_)));
        assert!(matches!(next_value(&mut b), Framed::Value(v) if v["execute"] == "c"));
    }

    #[test]
    fn command_shape() {
        assert!(parse_command(&json!({"execute": "x", "arguments": {"a": 1}, "id": 3})).is_ok());
        assert_eq!(
            parse_command(&json!({"execute": 1})).unwrap_err().class,
            "GenericError"
        );
        assert!(parse_command(&json!({"exec": "x"})).is_err());
        assert!(parse_command(&json!({"execute": "x", "arguments": []})).is_err());
        assert!(parse_command(&json!([1])).is_err());
    }

    #[test]
    fn a_session_negotiates_once_before_any_command() {
        let mut s = Session::default();
        let steps = |s: &mut Session, bytes: &str| {
            assert!(s.feed(bytes.as_bytes()).is_none());
            std::iter::from_fn(|| s.next_step()).collect::<Vec<_>>()
        };
        let got = steps(&mut s, r#"{"execute": "query-status", "id": 1}"#);
        assert!(
            matches!(&got[..], [Step::Reply(l)] if l.contains("Expecting capabilities") && l.contains(r#""id":1"#))
        );
        let got = steps(
            &mut s,
            r#"{"execute": "qmp_capabilities"} {"execute": "qmp_capabilities"}"#,
        );
        assert!(
            matches!(&got[..], [Step::Negotiated(_), Step::Reply(l)] if l.contains("already complete"))
        );
        let got = steps(&mut s, r#"{"execute": "stop", "arguments": {}, "id": "a"}"#);
        assert!(
            matches!(&got[..], [Step::Command { command, id: Some(id), .. }] if command == "stop" && id == "a")
        );
        // A message that never ends is dropped at the bound.
        let mut string = vec![b'a'; MAX_MESSAGE];
        string[0] = b'"';
        assert!(s.feed(&string).is_none());
        assert!(s.next_step().is_none());
        assert!(s.feed(b"a").unwrap().contains("message too large"));
        assert_eq!(s.pending(), 0);
    }
}
