//! The JSON that `-o json` prints, built as `serde_json` values and written on one line.
//! Objects keep their fields in the order given (`preserve_order`), so output is stable.
//!
//! The bytes come from `hirte_common::json::to_line`, which hirte-web's `/api/*` shares.

/// A JSON value.
pub type Json = serde_json::Value;

/// An object from `(field, value)` pairs, in that order.
pub fn obj<const N: usize>(fields: [(&str, Json); N]) -> Json {
    Json::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

/// An object from any `(field, value)` pairs, in that order.
pub fn object(fields: Vec<(String, Json)>) -> Json {
    Json::Object(fields.into_iter().collect())
}

/// A JSON string.
pub fn str(s: impl Into<String>) -> Json {
    Json::String(s.into())
}

/// One line, no insignificant whitespace: what scripts read line by line.
pub trait ToLine {
    fn to_line(&self) -> String;
}

impl ToLine for Json {
    fn to_line(&self) -> String {
        hirte_common::json::to_line(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `s` as a JSON string literal.
    fn escape(s: &str) -> String {
        str(s).to_line()
    }

    #[test]
    fn escapes_specials() {
        assert_eq!(escape("plain"), r#""plain""#);
        assert_eq!(escape(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(escape("l1\nl2\r\t"), r#""l1\nl2\r\t""#);
        assert_eq!(escape("\u{0}\u{1f}\u{8}\u{c}"), r#""\u0000\u001f\b\f""#);
        assert_eq!(escape("\u{7f}"), r#""\u007f""#);
        assert_eq!(escape("x\u{2028}y"), r#""x\u2028y""#);
        assert_eq!(
            escape("\u{2029}\u{7f}a\u{2028}"),
            r#""\u2029\u007fa\u2028""#
        );
        assert_eq!(escape("ünïcode ✓"), "\"ünïcode ✓\"");
        assert_eq!(escape("/"), r#""/""#);
        assert_eq!(escape(""), r#""""#);
    }

    #[test]
    fn writes_values() {
        let v = Json::Array(vec![
            obj([
                ("node", str("n1")),
                ("n", Json::from(u64::MAX)),
                ("ok", Json::Bool(true)),
                ("a", str("first")),
            ]),
            Json::Array(vec![]),
            object(vec![]),
        ]);
        assert_eq!(
            v.to_line(),
            r#"[{"node":"n1","n":18446744073709551615,"ok":true,"a":"first"},[],{}]"#
        );
    }

    #[test]
    fn keys_are_escaped_too() {
        let v = object(vec![("a\"b\u{2028}".to_string(), Json::Bool(false))]);
        assert_eq!(v.to_line(), r#"{"a\"b\u2028":false}"#);
    }
}
