//! A small pull scanner for XML, just enough for JUnit reports.
//!
//! Written by hand to keep the dependency set to serde + toml. It checks
//! that tags nest properly, so a truncated report (a crashed test run) is
//! an error rather than a silently shorter list of results.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Start {
        name: String,
        attrs: Vec<(String, String)>,
        self_closing: bool,
    },
    End {
        name: String,
    },
    /// Character data with entities resolved (CDATA included).
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XmlError {
    /// A comment, CDATA section, tag or attribute value runs to end of input.
    Unterminated {
        what: &'static str,
        line: usize,
    },
    BadTag {
        line: usize,
        detail: String,
    },
    Mismatched {
        line: usize,
        expected: String,
        found: String,
    },
    /// End of input with elements still open.
    Unclosed {
        name: String,
    },
}

impl fmt::Display for XmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XmlError::Unterminated { what, line } => {
                write!(f, "line {line}: unterminated {what}")
            }
            XmlError::BadTag { line, detail } => write!(f, "line {line}: malformed tag: {detail}"),
            XmlError::Mismatched {
                line,
                expected,
                found,
            } => write!(f, "line {line}: expected </{expected}>, found </{found}>"),
            XmlError::Unclosed { name } => {
                write!(f, "input ends inside <{name}> (truncated file?)")
            }
        }
    }
}

// [impl->req~trace.results-junit~1]
/// Resolves the five predefined entities and numeric character
/// references; anything else is kept literally rather than rejected.
pub fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(rest.get(..amp).unwrap_or(""));
        let after = rest.get(amp + 1..).unwrap_or("");
        let entity = after
            .find(';')
            .filter(|&semi| semi <= 10)
            .and_then(|semi| Some((after.get(..semi)?, after.get(semi + 1..)?)));
        let decoded = entity.and_then(|(name, tail)| {
            let c = match name {
                "lt" => '<',
                "gt" => '>',
                "amp" => '&',
                "quot" => '"',
                "apos" => '\'',
                _ => {
                    let code = match name.strip_prefix("#x").or_else(|| name.strip_prefix("#X")) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => name.strip_prefix('#')?.parse::<u32>().ok()?,
                    };
                    char::from_u32(code)?
                }
            };
            Some((c, tail))
        });
        match decoded {
            Some((c, tail)) => {
                out.push(c);
                rest = tail;
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

pub struct Scanner<'a> {
    text: &'a str,
    pos: usize,
    open: Vec<String>,
}

fn is_name_end(c: char) -> bool {
    c.is_whitespace() || c == '/' || c == '>' || c == '='
}

impl<'a> Scanner<'a> {
    pub fn new(text: &'a str) -> Self {
        // A byte order mark is not content.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        Scanner {
            text,
            pos: 0,
            open: Vec::new(),
        }
    }

    fn line_at(&self, pos: usize) -> usize {
        self.text.get(..pos).map_or(0, |s| s.matches('\n').count()) + 1
    }

    fn rest(&self) -> &'a str {
        self.text.get(self.pos..).unwrap_or("")
    }

    /// Moves past `terminator`, which must occur after `skip` bytes.
    fn skip_past(
        &mut self,
        skip: usize,
        terminator: &str,
        what: &'static str,
    ) -> Result<&'a str, XmlError> {
        let start = self.pos + skip;
        let body = self.text.get(start..).unwrap_or("");
        let Some(end) = body.find(terminator) else {
            return Err(XmlError::Unterminated {
                what,
                line: self.line_at(self.pos),
            });
        };
        self.pos = start + end + terminator.len();
        Ok(body.get(..end).unwrap_or(""))
    }

    // [impl->req~trace.results-junit~1]
    pub fn next_event(&mut self) -> Result<Option<Event>, XmlError> {
        loop {
            let rest = self.rest();
            if rest.is_empty() {
                return match self.open.pop() {
                    Some(name) => Err(XmlError::Unclosed { name }),
                    None => Ok(None),
                };
            }
            if rest.starts_with("<!--") {
                self.skip_past(4, "-->", "comment")?;
            } else if rest.starts_with("<![CDATA[") {
                let body = self.skip_past(9, "]]>", "CDATA section")?;
                return Ok(Some(Event::Text(body.to_owned())));
            } else if rest.starts_with("<?") {
                self.skip_past(2, "?>", "processing instruction")?;
            } else if rest.starts_with("<!") {
                self.skip_declaration()?;
            } else if rest.starts_with("</") {
                return self.end_tag().map(Some);
            } else if rest.starts_with('<') {
                return self.start_tag().map(Some);
            } else {
                let end = rest.find('<').unwrap_or(rest.len());
                self.pos += end;
                return Ok(Some(Event::Text(unescape(rest.get(..end).unwrap_or("")))));
            }
        }
    }

    /// `<!DOCTYPE ...>`, possibly with an internal subset in brackets.
    fn skip_declaration(&mut self) -> Result<(), XmlError> {
        let mut depth = 0usize;
        for (offset, c) in self.rest().char_indices() {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                '>' if depth == 0 => {
                    self.pos += offset + 1;
                    return Ok(());
                }
                _ => {}
            }
        }
        Err(XmlError::Unterminated {
            what: "declaration",
            line: self.line_at(self.pos),
        })
    }

    fn end_tag(&mut self) -> Result<Event, XmlError> {
        let line = self.line_at(self.pos);
        let name = self.skip_past(2, ">", "end tag")?.trim().to_owned();
        match self.open.pop() {
            Some(expected) if expected == name => Ok(Event::End { name }),
            Some(expected) => Err(XmlError::Mismatched {
                line,
                expected,
                found: name,
            }),
            None => Err(XmlError::BadTag {
                line,
                detail: format!("</{name}> without matching start tag"),
            }),
        }
    }

    fn start_tag(&mut self) -> Result<Event, XmlError> {
        let line = self.line_at(self.pos);
        let unterminated = XmlError::Unterminated {
            what: "start tag",
            line,
        };
        let body = self.rest().get(1..).unwrap_or("");
        let name_len = body.find(is_name_end).unwrap_or(body.len());
        let name = body.get(..name_len).unwrap_or("").to_owned();
        if name.is_empty() {
            return Err(XmlError::BadTag {
                line,
                detail: "missing element name".to_owned(),
            });
        }
        let mut rest = body.get(name_len..).unwrap_or("");
        let mut attrs = Vec::new();
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix("/>") {
                self.pos = self.text.len() - after.len();
                return Ok(Event::Start {
                    name,
                    attrs,
                    self_closing: true,
                });
            }
            if let Some(after) = rest.strip_prefix('>') {
                self.pos = self.text.len() - after.len();
                self.open.push(name.clone());
                return Ok(Event::Start {
                    name,
                    attrs,
                    self_closing: false,
                });
            }
            if rest.is_empty() {
                return Err(unterminated);
            }
            let attr_len = rest.find(is_name_end).unwrap_or(rest.len());
            let attr = rest.get(..attr_len).unwrap_or("").to_owned();
            let after_name = rest.get(attr_len..).unwrap_or("").trim_start();
            let Some(after_eq) = after_name.strip_prefix('=') else {
                if after_name.is_empty() {
                    return Err(unterminated);
                }
                return Err(XmlError::BadTag {
                    line,
                    detail: format!("attribute `{attr}` of <{name}> has no value"),
                });
            };
            let after_eq = after_eq.trim_start();
            let Some(quote) = after_eq.chars().next().filter(|c| *c == '"' || *c == '\'') else {
                if after_eq.is_empty() {
                    return Err(unterminated);
                }
                return Err(XmlError::BadTag {
                    line,
                    detail: format!("attribute `{attr}` of <{name}> is not quoted"),
                });
            };
            let value_text = after_eq.get(1..).unwrap_or("");
            let Some(close) = value_text.find(quote) else {
                return Err(XmlError::Unterminated {
                    what: "attribute value",
                    line,
                });
            };
            attrs.push((attr, unescape(value_text.get(..close).unwrap_or(""))));
            rest = value_text.get(close + 1..).unwrap_or("");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(text: &str) -> Result<Vec<Event>, XmlError> {
        let mut scanner = Scanner::new(text);
        let mut out = Vec::new();
        while let Some(ev) = scanner.next_event()? {
            out.push(ev);
        }
        Ok(out)
    }

    // [utest->req~trace.results-junit~1]
    #[test]
    fn scans_elements_attributes_and_text() {
        let evs = events(
            "\u{feff}<?xml version=\"1.0\"?>\n<!DOCTYPE x [<!ENTITY e \"v\">]>\n<!-- c > -->\
             <a k=\"1 &lt; 2 &amp;&amp; &quot;q&quot; > 0\" j='&#65;&#x42;'><b/>t&gt;<![CDATA[<raw>]]></a>",
        )
        .unwrap();
        let texts: Vec<&Event> = evs
            .iter()
            .filter(|e| !matches!(e, Event::Text(t) if t.trim().is_empty()))
            .collect();
        assert_eq!(
            texts[0],
            &Event::Start {
                name: "a".into(),
                attrs: vec![
                    ("k".into(), "1 < 2 && \"q\" > 0".into()),
                    ("j".into(), "AB".into())
                ],
                self_closing: false
            }
        );
        assert_eq!(
            texts[1],
            &Event::Start {
                name: "b".into(),
                attrs: vec![],
                self_closing: true
            }
        );
        assert_eq!(texts[2], &Event::Text("t>".into()));
        assert_eq!(texts[3], &Event::Text("<raw>".into()));
        assert_eq!(texts[4], &Event::End { name: "a".into() });
    }

    // [utest->req~trace.results-junit~1]
    #[test]
    fn rejects_broken_documents() {
        assert!(matches!(
            events("<a><b></a>"),
            Err(XmlError::Mismatched { .. })
        ));
        assert!(matches!(events("<a>\n<b>"), Err(XmlError::Unclosed { .. })));
        assert!(matches!(
            events("<a x=\"1></a>"),
            Err(XmlError::Unterminated { .. })
        ));
        assert!(matches!(events("<a x=1/>"), Err(XmlError::BadTag { .. })));
        assert!(matches!(events("</a>"), Err(XmlError::BadTag { .. })));
        assert!(matches!(
            events("<a><!-- open"),
            Err(XmlError::Unterminated { .. })
        ));
    }

    // [utest->req~trace.results-junit~1]
    #[test]
    fn unknown_entities_are_kept() {
        assert_eq!(unescape("a &nbsp; & b &#xZZ;"), "a &nbsp; & b &#xZZ;");
        assert_eq!(unescape("&apos;&#39;"), "''");
    }
}
