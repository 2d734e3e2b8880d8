//! Copying D-Bus arguments from one message into another, value by value.
//!
//! A relayed answer or event is never turned into a generic tree (`MessageItem`, `RefArg`):
//! such a tree takes many times the bytes of the message (a 4 MiB frame of small properties
//! grew the manager by 224 MiB). Here each value is read from the source message and appended
//! to the target at once, so the only memory is the target message itself.

use dbus::arg::{ArgType, Iter, IterAppend};
use dbus::strings::{Path, Signature};
use std::fmt;

/// Why arguments could not be copied. libdbus validated the message at decode, so only
/// what a link cannot carry (or a bug) gets here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyError {
    /// A file descriptor (`h`): a link carries none.
    UnixFd,
    /// Containers nested deeper than D-Bus allows.
    TooDeep,
    /// A value or signature the dbus crate could not read.
    Unreadable(String),
}

impl fmt::Display for CopyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CopyError::UnixFd => f.write_str("file descriptors (type 'h') cannot be relayed"),
            CopyError::TooDeep => write!(f, "containers nested deeper than {MAX_DEPTH}"),
            CopyError::Unreadable(what) => write!(f, "unreadable {what}"),
        }
    }
}

impl std::error::Error for CopyError {}

/// D-Bus' limit on container nesting (32 arrays + 32 structs); libdbus enforces it at
/// demarshal, this is a backstop for the recursion.
const MAX_DEPTH: u8 = 64;

/// Renames object paths on the way (`None`: unchanged).
pub type PathMap<'m> = &'m dyn Fn(&str) -> Option<String>;

/// No path renamed.
pub fn same_path(_: &str) -> Option<String> {
    None
}

/// Copies `from` and every argument after it into `to`.
// [impl->req~bounds.static-decode~1]
pub fn copy_args(
    from: &mut Iter<'_>,
    to: &mut IterAppend<'_>,
    paths: PathMap<'_>,
) -> Result<(), CopyError> {
    copy_at(from, to, paths, 0)
}

/// Copies every argument of `msg` into `to`.
pub fn copy_all(
    msg: &dbus::Message,
    to: &mut dbus::Message,
    paths: PathMap<'_>,
) -> Result<(), CopyError> {
    copy_args(&mut msg.iter_init(), &mut IterAppend::new(to), paths)
}

/// Bytes of a message as it goes on the wire (libdbus encodes it once for the count).
pub fn encoded_len(m: &dbus::Message) -> usize {
    let mut n = 0usize;
    let _ = m.marshal(|b| {
        n = n.saturating_add(b.len());
        Ok::<(), ()>(())
    });
    n
}

fn copy_at(
    from: &mut Iter<'_>,
    to: &mut IterAppend<'_>,
    paths: PathMap<'_>,
    depth: u8,
) -> Result<(), CopyError> {
    if depth > MAX_DEPTH {
        return Err(CopyError::TooDeep);
    }
    loop {
        let t = from.arg_type();
        if t == ArgType::Invalid {
            return Ok(());
        }
        copy_one(from, to, t, paths, depth)?;
        if !from.next() {
            return Ok(());
        }
    }
}

fn read<'a, T: dbus::arg::Get<'a>>(from: &mut Iter<'a>, t: ArgType) -> Result<T, CopyError> {
    from.get::<T>()
        .ok_or_else(|| CopyError::Unreadable(format!("value of type {}", t.as_str())))
}

fn sig(s: &str) -> Result<Signature<'static>, CopyError> {
    Signature::new(s.to_string()).map_err(|_| CopyError::Unreadable(format!("signature '{s}'")))
}

/// Runs a container's copy inside `open` (whose closure cannot return a value).
fn nested<'a, F>(
    from: &mut Iter<'_>,
    t: ArgType,
    paths: PathMap<'_>,
    depth: u8,
    open: F,
) -> Result<(), CopyError>
where
    F: FnOnce(&mut dyn FnMut(&mut IterAppend<'a>)),
{
    let mut sub = from
        .recurse(t)
        .ok_or_else(|| CopyError::Unreadable(format!("container {}", t.as_str())))?;
    let mut result = Ok(());
    open(&mut |inner: &mut IterAppend<'a>| {
        result = copy_at(&mut sub, inner, paths, depth + 1);
    });
    result
}

fn copy_one<'a>(
    from: &mut Iter<'_>,
    to: &mut IterAppend<'a>,
    t: ArgType,
    paths: PathMap<'_>,
    depth: u8,
) -> Result<(), CopyError> {
    match t {
        ArgType::Invalid => {}
        ArgType::Byte => to.append(read::<u8>(from, t)?),
        ArgType::Boolean => to.append(read::<bool>(from, t)?),
        ArgType::Int16 => to.append(read::<i16>(from, t)?),
        ArgType::UInt16 => to.append(read::<u16>(from, t)?),
        ArgType::Int32 => to.append(read::<i32>(from, t)?),
        ArgType::UInt32 => to.append(read::<u32>(from, t)?),
        ArgType::Int64 => to.append(read::<i64>(from, t)?),
        ArgType::UInt64 => to.append(read::<u64>(from, t)?),
        ArgType::Double => to.append(read::<f64>(from, t)?),
        ArgType::String => to.append(read::<&str>(from, t)?),
        ArgType::Signature => to.append(read::<Signature<'_>>(from, t)?),
        ArgType::ObjectPath => {
            let p = read::<Path<'_>>(from, t)?;
            match paths(&p) {
                None => to.append(p),
                Some(renamed) => to.append(
                    Path::new(renamed)
                        .map_err(|e| CopyError::Unreadable(format!("renamed path: {e}")))?,
                ),
            }
        }
        ArgType::UnixFd => return Err(CopyError::UnixFd),
        ArgType::Variant => {
            let inner = from
                .recurse(t)
                .map(|mut s| s.signature().to_string())
                .ok_or_else(|| CopyError::Unreadable("variant".to_string()))?;
            let inner = sig(&inner)?;
            nested(from, t, paths, depth, |f| to.append_variant(&inner, f))?;
        }
        ArgType::Struct => nested(from, t, paths, depth, |f| to.append_struct(f))?,
        ArgType::DictEntry => nested(from, t, paths, depth, |f| to.append_dict_entry(f))?,
        ArgType::Array => {
            // `a{KV}`: the dbus crate refuses the bare `{KV}` as a signature, so dicts are
            // opened with their key and value signatures.
            let whole = from.signature().to_string();
            let element = whole.get(1..).unwrap_or("");
            if let Some(entry) = element.strip_prefix('{').and_then(|e| e.strip_suffix('}')) {
                let key = sig(entry.get(..1).unwrap_or(""))?;
                let value = sig(entry.get(1..).unwrap_or(""))?;
                nested(from, t, paths, depth, |f| to.append_dict(&key, &value, f))?;
            } else {
                let element = sig(element)?;
                nested(from, t, paths, depth, |f| to.append_array(&element, f))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::signature_of;
    use dbus::arg::messageitem::MessageItem;
    use dbus::arg::{PropMap, RefArg, Variant};
    use dbus::Message;
    use std::collections::HashMap;

    fn msg() -> Message {
        Message::new_signal("/a", "a.b", "C").unwrap()
    }

    fn copied(m: &Message, paths: PathMap<'_>) -> Message {
        let mut out = msg();
        copy_all(m, &mut out, paths).unwrap();
        out
    }

    #[test]
    fn every_type_is_copied_unchanged() {
        let mut props = PropMap::new();
        props.insert(
            "s".into(),
            Variant(Box::new("x".to_string()) as Box<dyn RefArg>),
        );
        props.insert("u".into(), Variant(Box::new(7u32) as Box<dyn RefArg>));
        props.insert(
            "v".into(),
            Variant(Box::new(vec![(1i32, "a".to_string())]) as Box<dyn RefArg>),
        );
        let nested: HashMap<String, Vec<u8>> = HashMap::from([("k".into(), vec![1, 2, 3])]);
        let empty: Vec<(String, Path<'static>)> = Vec::new();
        let m = msg()
            .append3("unit", props, nested)
            .append3(
                (1u8, true, -2i16, 3u16, -4i64, 5u64, 0.5f64),
                Path::new("/o/p").unwrap(),
                Signature::new("a{sv}").unwrap(),
            )
            .append2(empty, vec![vec!["a".to_string()]]);
        let out = copied(&m, &same_path);
        assert_eq!(signature_of(&out), signature_of(&m));
        assert_eq!(out.get_items(), m.get_items());
    }

    #[test]
    fn object_paths_can_be_renamed_everywhere() {
        let p = || Path::new("/old/x").unwrap();
        let inside = Variant(Box::new(p()) as Box<dyn RefArg>);
        let m = msg().append3(p(), vec![(1u32, p())], inside);
        let rename = |s: &str| s.strip_prefix("/old").map(|r| format!("/new{r}"));
        let out = copied(&m, &rename);
        let (a, b, c): (Path, Vec<(u32, Path)>, Variant<Path>) = out.read3().unwrap();
        assert_eq!(&*a, "/new/x");
        assert_eq!(&*b[0].1, "/new/x");
        assert_eq!(&*c.0, "/new/x");
    }

    #[test]
    fn file_descriptors_are_refused() {
        let fd = std::fs::File::open("/dev/null").unwrap();
        let m = msg().append2("a", fd);
        let mut out = msg();
        assert_eq!(copy_all(&m, &mut out, &same_path), Err(CopyError::UnixFd));
        assert!(MessageItem::Str("a".into()) == out.get_items()[0]);
    }
}
