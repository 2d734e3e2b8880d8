//! The JSON that `-o json` prints. Hand-written (a value type, a writer and RFC 8259 string
//! escaping) so hirtectl needs no serializer crate; it only ever writes JSON, never reads it.

use std::fmt::Write;

/// A JSON value. Objects keep their fields in the order given, so output is stable.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Bool(bool),
    U64(u64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// An object from `(field, value)` pairs.
    pub fn obj<const N: usize>(fields: [(&str, Json); N]) -> Json {
        Json::Obj(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    pub fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }

    /// One line, no insignificant whitespace: what scripts read line by line.
    pub fn to_line(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::U64(n) => {
                let _ = write!(out, "{n}");
            }
            Json::Str(s) => escape_into(s, out),
            Json::Arr(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write(out);
                }
                out.push(']');
            }
            Json::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    escape_into(k, out);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }
}

/// Writes `s` as a JSON string literal: `"` and `\` escaped, control characters as short
/// escapes or `\u00XX`. Everything else, including non-ASCII, is written as UTF-8 (valid JSON).
/// U+2028/U+2029 are escaped too, so the output is also safe to embed in JavaScript.
pub fn escape_into(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `s` as a JSON string literal.
#[cfg(test)]
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    escape_into(s, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_specials() {
        assert_eq!(escape("plain"), r#""plain""#);
        assert_eq!(escape(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(escape("l1\nl2\r\t"), r#""l1\nl2\r\t""#);
        assert_eq!(escape("\u{0}\u{1f}\u{8}\u{c}"), r#""\u0000\u001f\b\f""#);
        assert_eq!(escape("\u{7f}"), r#""\u007f""#);
        assert_eq!(escape("x\u{2028}y"), r#""x\u2028y""#);
        assert_eq!(escape("ünïcode ✓"), "\"ünïcode ✓\"");
        assert_eq!(escape("/"), r#""/""#);
        assert_eq!(escape(""), r#""""#);
    }

    #[test]
    fn writes_values() {
        let v = Json::Arr(vec![
            Json::obj([
                ("node", Json::str("n1")),
                ("n", Json::U64(u64::MAX)),
                ("ok", Json::Bool(true)),
            ]),
            Json::Arr(vec![]),
            Json::Obj(vec![]),
        ]);
        assert_eq!(
            v.to_line(),
            r#"[{"node":"n1","n":18446744073709551615,"ok":true},[],{}]"#
        );
    }

    #[test]
    fn keys_are_escaped_too() {
        let v = Json::Obj(vec![("a\"b".into(), Json::Bool(false))]);
        assert_eq!(v.to_line(), r#"{"a\"b":false}"#);
    }
}
