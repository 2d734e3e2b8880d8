//! Specification item IDs in OpenFastTrace form: `<type>~<name>~<revision>`.
//!
//! The grammar follows OFT's own ID pattern so that every ID accepted here is
//! also accepted by the real OFT tool: the type is ASCII letters, the name
//! starts with a letter and continues with letters, digits, `_` and `-`, with
//! further `.`-separated segments of the same characters, and the revision is
//! a decimal number.

use std::fmt;

/// A full item ID, revision included.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemId {
    pub kind: String,
    pub name: String,
    pub revision: u32,
}

/// An item's identity without its revision: duplicates and outdated
/// references are judged on this.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemKey {
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdError {
    /// Not of the form `<type>~<name>~<revision>`.
    Shape(String),
    /// The name part breaks the OFT name grammar.
    Name(String),
    /// The revision is not a number that fits in 32 bits.
    Revision(String),
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdError::Shape(text) => {
                write!(f, "`{text}` is not of the form <type>~<name>~<revision>")
            }
            IdError::Name(text) => write!(
                f,
                "`{text}` has an invalid name: it must start with a letter and contain only \
                 letters, digits, `_`, `-` and `.`-separated segments"
            ),
            IdError::Revision(text) => {
                write!(
                    f,
                    "`{text}` has an invalid revision: expected a decimal number"
                )
            }
        }
    }
}

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}~{}~{}", self.kind, self.name, self.revision)
    }
}

impl fmt::Display for ItemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}~{}", self.kind, self.name)
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

// [impl->req~trace.spec-format~1]
fn valid_name(name: &str) -> bool {
    let mut segments = name.split('.');
    let first_ok = segments.next().is_some_and(|first| {
        first
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
            && first.chars().all(is_name_char)
    });
    first_ok && segments.all(|seg| !seg.is_empty() && seg.chars().all(is_name_char))
}

impl ItemId {
    /// Parses a complete ID; surrounding whitespace is not allowed.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let mut parts = text.split('~');
        let (Some(kind), Some(name), Some(revision), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(IdError::Shape(text.to_owned()));
        };
        if kind.is_empty() || !kind.chars().all(|c| c.is_ascii_alphabetic()) {
            return Err(IdError::Shape(text.to_owned()));
        }
        if !valid_name(name) {
            return Err(IdError::Name(text.to_owned()));
        }
        if revision.is_empty() || !revision.chars().all(|c| c.is_ascii_digit()) {
            return Err(IdError::Revision(text.to_owned()));
        }
        let revision = revision
            .parse::<u32>()
            .map_err(|_| IdError::Revision(text.to_owned()))?;
        Ok(ItemId {
            kind: kind.to_owned(),
            name: name.to_owned(),
            revision,
        })
    }

    /// Reads the longest ID-shaped prefix of `text` and returns the ID and
    /// the text after it, or `None` when `text` does not start with a
    /// valid ID.
    pub fn parse_prefix(text: &str) -> Option<(ItemId, &str)> {
        let kind_len = text
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(text.len());
        let after_kind = text.get(kind_len..)?.strip_prefix('~')?;
        let name_len = after_kind
            .find(|c: char| !(is_name_char(c) || c == '.'))
            .unwrap_or(after_kind.len());
        let after_name = after_kind.get(name_len..)?.strip_prefix('~')?;
        let rev_len = after_name
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after_name.len());
        let consumed = kind_len + 1 + name_len + 1 + rev_len;
        let id = ItemId::parse(text.get(..consumed)?).ok()?;
        Some((id, text.get(consumed..)?))
    }

    pub fn key(&self) -> ItemKey {
        ItemKey {
            kind: self.kind.clone(),
            name: self.name.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // [utest->req~trace.spec-format~1]
    #[test]
    fn parses_valid_ids() {
        let id = ItemId::parse("req~manager.register~1").unwrap();
        assert_eq!(id.kind, "req");
        assert_eq!(id.name, "manager.register");
        assert_eq!(id.revision, 1);
        assert_eq!(id.to_string(), "req~manager.register~1");
        assert!(ItemId::parse("req~a-b_c.2x.y~42").is_ok());
    }

    // [utest->req~trace.spec-format~1]
    #[test]
    fn rejects_invalid_ids() {
        assert!(matches!(ItemId::parse("req~x"), Err(IdError::Shape(_))));
        assert!(matches!(ItemId::parse("r1q~x~1"), Err(IdError::Shape(_))));
        assert!(matches!(ItemId::parse("req~1x~1"), Err(IdError::Name(_))));
        assert!(matches!(ItemId::parse("req~a..b~1"), Err(IdError::Name(_))));
        assert!(matches!(ItemId::parse("req~a.~1"), Err(IdError::Name(_))));
        assert!(matches!(
            ItemId::parse("req~a~x"),
            Err(IdError::Revision(_))
        ));
        assert!(matches!(
            ItemId::parse("req~a~99999999999"),
            Err(IdError::Revision(_))
        ));
        assert!(matches!(ItemId::parse("req~a~1~2"), Err(IdError::Shape(_))));
    }

    // [utest->req~trace.spec-format~1]
    #[test]
    fn parses_prefix_and_returns_rest() {
        let (id, rest) = ItemId::parse_prefix("req~a.b~3` trailing").unwrap();
        assert_eq!(id.to_string(), "req~a.b~3");
        assert_eq!(rest, "` trailing");
        assert!(ItemId::parse_prefix("req~a.b").is_none());
        assert!(ItemId::parse_prefix(" req~a~1").is_none());
    }
}
