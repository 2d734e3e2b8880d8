//! Shell-style name matching for `--filter`: `*`, `?`, `[...]` (ranges, `!`/`^` negation) and
//! `\` to quote the next character. Written here because fnmatch semantics on unit names are
//! all we need; a dependency would be larger than this file.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Char(char),
    Any,
    Star,
    Class {
        negated: bool,
        items: Vec<(char, char)>,
    },
}

/// A compiled pattern.
#[derive(Debug, Clone)]
pub struct Glob {
    tokens: Vec<Token>,
}

impl Glob {
    /// Compiles `pattern`. An unclosed `[` is an ordinary character, as fnmatch treats it.
    pub fn new(pattern: &str) -> Glob {
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while let Some(&c) = chars.get(i) {
            match c {
                '*' => {
                    // Consecutive stars match the same as one.
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                    i += 1;
                }
                '?' => {
                    tokens.push(Token::Any);
                    i += 1;
                }
                '\\' => {
                    match chars.get(i + 1) {
                        Some(&n) => tokens.push(Token::Char(n)),
                        None => tokens.push(Token::Char('\\')),
                    }
                    i += 2;
                }
                '[' => match parse_class(&chars, i + 1) {
                    Some((tok, next)) => {
                        tokens.push(tok);
                        i = next;
                    }
                    None => {
                        tokens.push(Token::Char('['));
                        i += 1;
                    }
                },
                other => {
                    tokens.push(Token::Char(other));
                    i += 1;
                }
            }
        }
        Glob { tokens }
    }

    /// Whether the whole of `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let text: Vec<char> = name.chars().collect();
        // Iterative matching with one backtrack point (the last star): linear in practice,
        // never exponential.
        let (mut t, mut p) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        loop {
            match (self.tokens.get(p), text.get(t)) {
                (Some(Token::Star), _) => {
                    star = Some((p, t));
                    p += 1;
                }
                (Some(tok), Some(&c)) if single_matches(tok, c) => {
                    p += 1;
                    t += 1;
                }
                (None, None) => return true,
                _ => match star {
                    // Let the last star swallow one more character and retry.
                    Some((sp, st)) if st < text.len() => {
                        star = Some((sp, st + 1));
                        p = sp + 1;
                        t = st + 1;
                    }
                    _ => return false,
                },
            }
        }
    }
}

fn single_matches(tok: &Token, c: char) -> bool {
    match tok {
        Token::Char(x) => *x == c,
        Token::Any => true,
        Token::Star => false,
        Token::Class { negated, items } => {
            let hit = items.iter().any(|(lo, hi)| *lo <= c && c <= *hi);
            hit != *negated
        }
    }
}

/// Parses a class whose `[` is just before `start`; returns it and the index after its `]`.
fn parse_class(chars: &[char], start: usize) -> Option<(Token, usize)> {
    let mut i = start;
    let negated = matches!(chars.get(i), Some('!') | Some('^'));
    if negated {
        i += 1;
    }
    let mut items = Vec::new();
    let mut first = true;
    loop {
        let c = *chars.get(i)?;
        if c == ']' && !first {
            return Some((Token::Class { negated, items }, i + 1));
        }
        first = false;
        let lo = if c == '\\' {
            i += 1;
            *chars.get(i)?
        } else {
            c
        };
        // `a-z` is a range; a `-` before `]` is literal.
        match (chars.get(i + 1), chars.get(i + 2)) {
            (Some('-'), Some(&hi)) if hi != ']' => {
                items.push((lo, hi));
                i += 3;
            }
            _ => {
                items.push((lo, lo));
                i += 1;
            }
        }
    }
}

/// `true` when there is no filter or the name matches it.
pub fn keep(filter: Option<&Glob>, name: &str) -> bool {
    filter.is_none_or(|g| g.matches(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        Glob::new(p).matches(s)
    }

    #[test]
    fn literals_and_wildcards() {
        assert!(m("httpd.service", "httpd.service"));
        assert!(!m("httpd.service", "httpd.socket"));
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("*.service", "a.service"));
        assert!(!m("*.service", "a.socket"));
        assert!(m("app-*.service", "app-frontend.service"));
        assert!(!m("app-*.service", "webapp-frontend.service"));
        assert!(m("n?", "n1"));
        assert!(!m("n?", "n10"));
        assert!(m("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!m("*a*b*c*", "xxaxxcxxbxx"));
        assert!(m("a**b", "ab"));
        assert!(!m("", "a"));
        assert!(m("", ""));
    }

    #[test]
    fn classes() {
        assert!(m("n[12]", "n1"));
        assert!(!m("n[12]", "n3"));
        assert!(m("n[0-9]", "n7"));
        assert!(!m("n[!0-9]", "n7"));
        assert!(m("n[^0-9]", "nx"));
        assert!(m("[]]", "]"));
        assert!(m("[a-]", "-"));
        assert!(m("x[", "x["), "unclosed class is literal");
        assert!(m("[*]", "*"));
        assert!(!m("[*]", "a"));
    }

    #[test]
    fn escapes_and_unicode() {
        assert!(m("a\\*", "a*"));
        assert!(!m("a\\*", "ab"));
        assert!(m("\\?", "?"));
        assert!(m("ü?", "üx"));
        assert!(m("*ß", "straß"));
    }

    #[test]
    fn pathological_pattern_is_fast() {
        let p = "*a".repeat(30);
        let s = "a".repeat(29) + "b";
        assert!(!m(&p, &s));
    }

    #[test]
    fn keep_without_filter() {
        assert!(keep(None, "x"));
        assert!(!keep(Some(&Glob::new("y")), "x"));
    }
}
