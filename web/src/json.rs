//! JSON for `/api/*`: serde_json with the string escaping hirtectl's `-o json` uses, so
//! `/api/nodes` and `/api/units` are the same bytes as `hirtectl -o json list-nodes/list-units`.
//!
//! serde_json already escapes `"`, `\` and control characters below U+0020 the way hirtectl
//! does (short escapes, else `\u00xx` in lowercase hex); hirtectl also escapes DEL and
//! U+2028/U+2029 (so the output is safe to embed in JavaScript). This formatter adds those.

use serde::Serialize;
use serde_json::ser::Formatter;
use std::io;

struct CtlFormatter;

/// Characters hirtectl escapes that serde_json writes as they are.
fn extra_escape(c: char) -> bool {
    c == '\u{7f}' || c == '\u{2028}' || c == '\u{2029}'
}

impl Formatter for CtlFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if extra_escape(c) {
                writer.write_all(fragment.get(start..i).unwrap_or("").as_bytes())?;
                write!(writer, "\\u{:04x}", u32::from(c))?;
                start = i + c.len_utf8();
            }
        }
        writer.write_all(fragment.get(start..).unwrap_or("").as_bytes())
    }
}

/// One line of JSON, no insignificant whitespace, no trailing newline.
pub fn to_line<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, CtlFormatter);
    if value.serialize(&mut ser).is_err() {
        // Only maps with non-string keys fail; none of our documents has one.
        return "null".to_string();
    }
    String::from_utf8(out).unwrap_or_else(|_| "null".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    // [utest->req~web.api~1]
    #[test]
    fn escapes_like_hirtectl() {
        // The cases of ctl/src/json.rs's escaping test, same expected bytes.
        let cases = [
            ("plain", r#""plain""#),
            (r#"a"b\c"#, r#""a\"b\\c""#),
            ("l1\nl2\r\t", r#""l1\nl2\r\t""#),
            ("\u{0}\u{1f}\u{8}\u{c}", r#""\u0000\u001f\b\f""#),
            ("\u{7f}", r#""\u007f""#),
            ("x\u{2028}y\u{2029}", r#""x\u2028y\u2029""#),
            ("ünïcode ✓", "\"ünïcode ✓\""),
            ("/", r#""/""#),
            ("", r#""""#),
        ];
        for (input, want) in cases {
            assert_eq!(to_line(input), want, "{input:?}");
        }
    }

    #[test]
    fn objects_keep_field_order() {
        #[derive(Serialize)]
        struct Row<'a> {
            node: &'a str,
            n: u64,
            ok: bool,
        }
        let v = (
            vec![Row {
                node: "n1",
                n: u64::MAX,
                ok: true,
            }],
            Vec::<u8>::new(),
        );
        assert_eq!(
            to_line(&v),
            r#"[[{"node":"n1","n":18446744073709551615,"ok":true}],[]]"#
        );
    }
}
