//! One line of JSON as hirtectl's `-o json` and hirte-web's `/api/*` write it: serde_json's
//! compact output, plus `\\u` escapes for DEL, U+2028 and U+2029 so the output is also safe to
//! embed in JavaScript, as hirtectl always printed it. One writer, so both stay byte-identical.

use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter};
use std::io;

/// One line, no insignificant whitespace, no trailing newline.
pub fn to_line<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, LineFormatter);
    // Fails only on a map with non-string keys; none of our documents has one.
    if value.serialize(&mut ser).is_err() {
        return "null".to_string();
    }
    String::from_utf8(out).unwrap_or_else(|_| "null".to_string())
}

/// serde_json's compact output, with DEL, U+2028 and U+2029 escaped as `\u....` as well.
struct LineFormatter;

impl Formatter for LineFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut rest = fragment;
        while let Some(i) = rest.find(['\u{7f}', '\u{2028}', '\u{2029}']) {
            let (plain, tail) = rest.split_at(i);
            CompactFormatter.write_string_fragment(writer, plain)?;
            let mut chars = tail.chars();
            if let Some(c) = chars.next() {
                write!(writer, "\\u{:04x}", u32::from(c))?;
            }
            rest = chars.as_str();
        }
        CompactFormatter.write_string_fragment(writer, rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // [utest->req~web.api~1]
    #[test]
    fn escapes_like_hirtectl() {
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
