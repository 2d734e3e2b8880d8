//! A minimal JSON reader for libtest's `--format json` lines.
//!
//! Hand-written so that the crate's only dependencies stay serde + toml.
//! Nesting depth is bounded so hostile input cannot overflow the stack.

use std::fmt;
use std::iter::Peekable;
use std::str::CharIndices;

const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// Kept as text: only test names and events are needed.
    Number(String),
    String(String),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
}

impl Value {
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonError {
    UnexpectedEnd,
    Unexpected { column: usize, found: char },
    BadEscape { column: usize },
    TooDeep,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonError::UnexpectedEnd => write!(f, "unexpected end of JSON"),
            JsonError::Unexpected { column, found } => {
                write!(f, "unexpected `{found}` at column {column}")
            }
            JsonError::BadEscape { column } => write!(f, "bad escape at column {column}"),
            JsonError::TooDeep => write!(f, "JSON nested deeper than {MAX_DEPTH} levels"),
        }
    }
}

struct Parser<'a> {
    chars: Peekable<CharIndices<'a>>,
    depth: usize,
}

/// Parses one complete JSON value; trailing non-space text is an error.
// [impl->req~trace.results-libtest~1]
pub fn parse(text: &str) -> Result<Value, JsonError> {
    let mut parser = Parser {
        chars: text.char_indices().peekable(),
        depth: 0,
    };
    let value = parser.value()?;
    parser.skip_ws();
    match parser.chars.next() {
        None => Ok(value),
        Some((pos, found)) => Err(JsonError::Unexpected {
            column: pos + 1,
            found,
        }),
    }
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    }

    fn next(&mut self) -> Result<(usize, char), JsonError> {
        self.chars.next().ok_or(JsonError::UnexpectedEnd)
    }

    fn expect(&mut self, want: char) -> Result<(), JsonError> {
        match self.next()? {
            (_, c) if c == want => Ok(()),
            (pos, found) => Err(JsonError::Unexpected {
                column: pos + 1,
                found,
            }),
        }
    }

    fn value(&mut self) -> Result<Value, JsonError> {
        self.skip_ws();
        let &(pos, c) = self.chars.peek().ok_or(JsonError::UnexpectedEnd)?;
        match c {
            '{' => self.nested(Self::object),
            '[' => self.nested(Self::array),
            '"' => self.string().map(Value::String),
            't' => self.literal("true", Value::Bool(true)),
            'f' => self.literal("false", Value::Bool(false)),
            'n' => self.literal("null", Value::Null),
            '-' | '0'..='9' => Ok(self.number()),
            found => Err(JsonError::Unexpected {
                column: pos + 1,
                found,
            }),
        }
    }

    fn nested(
        &mut self,
        parse: fn(&mut Self) -> Result<Value, JsonError>,
    ) -> Result<Value, JsonError> {
        if self.depth >= MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        self.depth += 1;
        let value = parse(self);
        self.depth -= 1;
        value
    }

    fn literal(&mut self, word: &str, value: Value) -> Result<Value, JsonError> {
        for want in word.chars() {
            self.expect(want)?;
        }
        Ok(value)
    }

    fn number(&mut self) -> Value {
        let mut text = String::new();
        while let Some((_, c)) = self
            .chars
            .next_if(|(_, c)| c.is_ascii_digit() || "+-.eE".contains(*c))
        {
            text.push(c);
        }
        Value::Number(text)
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let mut code = 0u32;
        for _ in 0..4 {
            let (pos, c) = self.next()?;
            let digit = c
                .to_digit(16)
                .ok_or(JsonError::BadEscape { column: pos + 1 })?;
            code = code * 16 + digit;
        }
        Ok(code)
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.expect('"')?;
        let mut out = String::new();
        loop {
            let (pos, c) = self.next()?;
            match c {
                '"' => return Ok(out),
                '\\' => {
                    let (pos, esc) = self.next()?;
                    let decoded = match esc {
                        '"' => '"',
                        '\\' => '\\',
                        '/' => '/',
                        'b' => '\u{8}',
                        'f' => '\u{c}',
                        'n' => '\n',
                        'r' => '\r',
                        't' => '\t',
                        'u' => self.unicode_escape()?,
                        _ => return Err(JsonError::BadEscape { column: pos + 1 }),
                    };
                    out.push(decoded);
                }
                c if u32::from(c) < 0x20 => {
                    return Err(JsonError::Unexpected {
                        column: pos + 1,
                        found: c,
                    })
                }
                c => out.push(c),
            }
        }
    }

    /// `\uXXXX`, combining UTF-16 surrogate pairs; lone surrogates become
    /// U+FFFD instead of failing the whole line.
    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let high = self.hex4()?;
        if !(0xD800..0xDC00).contains(&high) {
            return Ok(char::from_u32(high).unwrap_or('\u{fffd}'));
        }
        let is_low_next = self.chars.clone().next().map(|(_, c)| c) == Some('\\')
            && self.chars.clone().nth(1).map(|(_, c)| c) == Some('u');
        if !is_low_next {
            return Ok('\u{fffd}');
        }
        self.next()?;
        self.next()?;
        let low = self.hex4()?;
        if !(0xDC00..0xE000).contains(&low) {
            return Ok('\u{fffd}');
        }
        let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
        Ok(char::from_u32(code).unwrap_or('\u{fffd}'))
    }

    fn array(&mut self) -> Result<Value, JsonError> {
        self.expect('[')?;
        let mut items = Vec::new();
        self.skip_ws();
        if self.chars.next_if(|(_, c)| *c == ']').is_some() {
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value()?);
            self.skip_ws();
            match self.next()? {
                (_, ',') => continue,
                (_, ']') => return Ok(Value::Array(items)),
                (pos, found) => {
                    return Err(JsonError::Unexpected {
                        column: pos + 1,
                        found,
                    })
                }
            }
        }
    }

    fn object(&mut self) -> Result<Value, JsonError> {
        self.expect('{')?;
        let mut members = Vec::new();
        self.skip_ws();
        if self.chars.next_if(|(_, c)| *c == '}').is_some() {
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_ws();
            let key = self.string()?;
            self.skip_ws();
            self.expect(':')?;
            members.push((key, self.value()?));
            self.skip_ws();
            match self.next()? {
                (_, ',') => continue,
                (_, '}') => return Ok(Value::Object(members)),
                (pos, found) => {
                    return Err(JsonError::Unexpected {
                        column: pos + 1,
                        found,
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // [utest->req~trace.results-libtest~1]
    #[test]
    fn parses_libtest_event() {
        let v = parse(
            r#" { "type": "test", "name": "a::b", "event": "failed", "exec_time": 0.5,
                 "stdout": "x\n\"y\" \u00e9 \ud83d\ude00", "n": [1, true, null, {}] } "#,
        )
        .unwrap();
        assert_eq!(v.get("type").and_then(Value::as_str), Some("test"));
        assert_eq!(v.get("name").and_then(Value::as_str), Some("a::b"));
        assert_eq!(
            v.get("stdout").and_then(Value::as_str),
            Some("x\n\"y\" é 😀")
        );
        assert_eq!(v.get("exec_time"), Some(&Value::Number("0.5".into())));
        assert!(v.get("missing").is_none());
    }

    // [utest->req~trace.results-libtest~1]
    #[test]
    fn rejects_bad_json() {
        assert_eq!(parse("{\"a\": 1"), Err(JsonError::UnexpectedEnd));
        assert!(matches!(
            parse("{\"a\" 1}"),
            Err(JsonError::Unexpected { .. })
        ));
        assert!(matches!(parse("\"\\q\""), Err(JsonError::BadEscape { .. })));
        assert!(matches!(parse("{} x"), Err(JsonError::Unexpected { .. })));
        assert!(matches!(parse("tru"), Err(JsonError::UnexpectedEnd)));
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert_eq!(parse(&deep), Err(JsonError::TooDeep));
    }
}
