//! The manager<->agent link framing: a 4-byte big-endian length, then one D-Bus message in
//! the standard wire format. Sans-IO: bytes go in, messages or a typed error come out.

use dbus::Message;
use std::fmt;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// What is wrong with the bytes a peer sent. Every variant ends the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A length prefix of 0: no message can be that short.
    Empty,
    /// A length prefix above the bound in force.
    TooLarge { len: usize, max: usize },
    /// The payload is not one valid D-Bus message.
    BadMessage(String),
    /// The payload holds a message, but its length disagrees with the frame's.
    LengthMismatch { frame: usize, message: usize },
    /// An outgoing message would exceed the bound.
    OutgoingTooLarge { len: usize, max: usize },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Empty => write!(f, "frame of length 0"),
            FrameError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the maximum of {max}")
            }
            FrameError::BadMessage(e) => write!(f, "frame is not a valid D-Bus message: {e}"),
            FrameError::LengthMismatch { frame, message } => write!(
                f,
                "frame of {frame} bytes holds a D-Bus message of {message} bytes"
            ),
            FrameError::OutgoingTooLarge { len, max } => {
                write!(
                    f,
                    "message of {len} bytes exceeds the frame maximum of {max}"
                )
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Reassembles frames from a byte stream. Its buffer never holds more than one maximal
/// frame plus one read chunk, whatever the peer sends.
// [impl->req~link.framing~1]
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max_frame: usize,
    /// Length prefix + payload of the last frame taken.
    last_len: usize,
}

impl FrameDecoder {
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            max_frame,
            last_len: 0,
        }
    }

    /// Tightens or loosens the bound, e.g. once a connection has registered.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// Bytes of the last frame taken (prefix included): what it cost to receive, for the
    /// receiver's byte budgets.
    pub fn last_frame_len(&self) -> usize {
        self.last_len
    }

    /// Bytes held that do not yet form a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Adds bytes read from the peer. The length prefix is checked as soon as it is complete,
    /// so an oversized frame is refused before its payload is buffered.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.buf.extend_from_slice(bytes);
        // Room for exactly the frame under way, not a doubling: a manager holds one partial
        // frame per link at once when every node answers a fan-out.
        if let Some(len) = self.check_header()? {
            let missing = (HEADER_LEN + len).saturating_sub(self.buf.len());
            self.buf.reserve_exact(missing);
        }
        Ok(())
    }

    fn check_header(&self) -> Result<Option<usize>, FrameError> {
        let Some(header) = self.buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; HEADER_LEN];
        len_bytes.copy_from_slice(header);
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        Ok(Some(len))
    }

    /// The next complete frame's payload, if one is buffered.
    pub fn next_payload(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(len) = self.check_header()? else {
            return Ok(None);
        };
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self
            .buf
            .get(HEADER_LEN..HEADER_LEN + len)
            .map(<[u8]>::to_vec);
        self.consume(len);
        Ok(payload)
    }

    /// Drops the frame of payload length `len` at the front.
    fn consume(&mut self, len: usize) {
        self.last_len = HEADER_LEN + len;
        self.buf.drain(..self.last_len.min(self.buf.len()));
        if self.buf.is_empty() {
            // Give back the memory of a large frame once it is consumed.
            self.buf = Vec::new();
        }
    }

    /// The next complete frame as a D-Bus message, decoded where it lies in the buffer.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        let Some(len) = self.check_header()? else {
            return Ok(None);
        };
        let Some(payload) = self.buf.get(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(None);
        };
        let msg = decode_message(payload);
        self.consume(len);
        msg.map(Some)
    }
}

/// D-Bus message types (header byte 1): method call, method return, error, signal.
const KNOWN_MESSAGE_TYPES: std::ops::RangeInclusive<u8> = 1..=4;

/// Parses one frame payload into a message; the payload must be exactly one message.
pub fn decode_message(payload: &[u8]) -> Result<Message, FrameError> {
    // libdbus accepts message types it does not know (the spec says to ignore them), but the
    // dbus crate panics on them; no peer may reach that, so they are refused here.
    // [impl->req~link.bad-frame~1]
    if let Some(t) = payload.get(1).filter(|t| !KNOWN_MESSAGE_TYPES.contains(t)) {
        return Err(FrameError::BadMessage(format!("unknown message type {t}")));
    }
    let needed = Message::demarshal_bytes_needed(payload)
        .map_err(|()| FrameError::BadMessage("invalid message header".to_string()))?;
    if needed != payload.len() {
        return Err(FrameError::LengthMismatch {
            frame: payload.len(),
            message: needed,
        });
    }
    let msg = Message::demarshal(payload).map_err(|e| {
        FrameError::BadMessage(e.message().unwrap_or("unknown demarshal error").to_string())
    })?;
    // [impl->req~link.unsupported-types~1]
    // The top-level signature names every type but those inside variants: only one with an
    // `h`, or with a variant that could hide one, needs a walk through the arguments.
    let sig = crate::protocol::signature_of(&msg);
    if sig.contains('h') || (sig.contains('v') && carries_unix_fd(msg.iter_init(), 0)) {
        return Err(FrameError::BadMessage(
            "file descriptors (type 'h') cannot cross the link".to_string(),
        ));
    }
    Ok(msg)
}

/// D-Bus' limit on container nesting (libdbus enforces it at demarshal; kept as a backstop).
const MAX_NESTING: u8 = 64;

/// Whether any argument, also inside variants, is a file descriptor (`h`). A link carries
/// no fds, and the dbus crate panics reading or re-appending one without them; every other
/// type libdbus accepted at demarshal reads and re-appends cleanly. Only containers whose
/// signature holds a variant are entered, so a large array of plain values costs one look.
fn carries_unix_fd(mut it: dbus::arg::Iter<'_>, depth: u8) -> bool {
    use dbus::arg::ArgType;
    loop {
        let t = it.arg_type();
        match t {
            ArgType::Invalid => return false,
            ArgType::UnixFd => return true,
            // The dbus crate panics building the signature of a bare dict entry (`{sv}` is
            // not a valid signature alone): entries are only reached through an array whose
            // signature already said it holds a variant, so they are entered without looking.
            ArgType::DictEntry
                if depth >= MAX_NESTING
                    || it
                        .recurse(t)
                        .is_some_and(|sub| carries_unix_fd(sub, depth + 1)) =>
            {
                return true;
            }
            ArgType::Array | ArgType::Struct | ArgType::Variant => {
                let sig = it.signature();
                if sig.contains('h') || depth >= MAX_NESTING {
                    return true;
                }
                let holds_variant = t == ArgType::Variant || sig.contains('v');
                if holds_variant
                    && it
                        .recurse(t)
                        .is_some_and(|sub| carries_unix_fd(sub, depth + 1))
                {
                    return true;
                }
            }
            _ => {}
        }
        if !it.next() {
            return false;
        }
    }
}

/// Serialises a message (whose serial must already be set) into one frame.
pub fn encode_message(msg: &Message, max_frame: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER_LEN];
    msg.marshal(|chunk| {
        out.extend_from_slice(chunk);
        Ok::<(), ()>(())
    })
    .map_err(|()| FrameError::BadMessage("marshal failed".to_string()))?;
    let len = out.len() - HEADER_LEN;
    if len > max_frame {
        return Err(FrameError::OutgoingTooLarge {
            len,
            max: max_frame,
        });
    }
    let len32 = u32::try_from(len).map_err(|_| FrameError::OutgoingTooLarge {
        len,
        max: max_frame,
    })?;
    if let Some(header) = out.get_mut(..HEADER_LEN) {
        header.copy_from_slice(&len32.to_be_bytes());
    }
    Ok(out)
}

/// Hands out the non-zero serials a sender must stamp on each message before marshalling;
/// shared by the threads that send on one link (a core and its link thread).
#[derive(Debug, Default)]
pub struct SerialCounter(std::sync::atomic::AtomicU32);

impl SerialCounter {
    pub fn next_serial(&self) -> u32 {
        loop {
            let s = self
                .0
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .wrapping_add(1);
            if s != 0 {
                return s;
            }
        }
    }

    /// Stamps the next serial on `msg` and frames it.
    pub fn encode(&self, msg: &mut Message, max_frame: usize) -> Result<Vec<u8>, FrameError> {
        msg.set_serial(self.next_serial());
        encode_message(msg, max_frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(serial: u32) -> Message {
        let mut m =
            Message::new_method_call("org.example", "/org/example", "org.example.Iface", "Hello")
                .unwrap()
                .append2("world", 42u32);
        m.set_serial(serial);
        m
    }

    // [utest->req~link.framing~1]
    #[test]
    fn roundtrip_in_arbitrary_chunks() {
        let mut bytes = Vec::new();
        for s in 1..=3 {
            bytes.extend(encode_message(&sample(s), 1024).unwrap());
        }
        for chunk in [1, 3, 7, bytes.len()] {
            let mut d = FrameDecoder::new(1024);
            let mut got = Vec::new();
            for c in bytes.chunks(chunk) {
                d.push(c).unwrap();
                while let Some(m) = d.next_message().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got.len(), 3);
            assert_eq!(got[2].get_serial(), Some(3));
            assert_eq!(got[0].read2::<&str, u32>().unwrap(), ("world", 42));
            assert_eq!(d.buffered(), 0);
        }
    }

    // [utest->req~link.max-frame~1]
    #[test]
    fn refuses_oversized_and_empty_frames_from_the_header() {
        let mut d = FrameDecoder::new(100);
        assert_eq!(
            d.push(&1000u32.to_be_bytes()),
            Err(FrameError::TooLarge {
                len: 1000,
                max: 100
            })
        );
        let mut d = FrameDecoder::new(100);
        assert_eq!(d.push(&0u32.to_be_bytes()), Err(FrameError::Empty));
        assert!(matches!(
            encode_message(&sample(1), 10),
            Err(FrameError::OutgoingTooLarge { .. })
        ));
    }

    #[test]
    fn refuses_garbage_and_truncated_messages() {
        let mut d = FrameDecoder::new(1024);
        d.push(&20u32.to_be_bytes()).unwrap();
        d.push(&[0xAB; 20]).unwrap();
        assert!(matches!(d.next_message(), Err(FrameError::BadMessage(_))));

        let good = encode_message(&sample(1), 1024).unwrap();
        // A frame whose length claims less than the message: the message is cut short.
        let mut cut = ((good.len() - 8) as u32).to_be_bytes().to_vec();
        cut.extend_from_slice(&good[4..good.len() - 4]);
        let mut d = FrameDecoder::new(1024);
        d.push(&cut).unwrap();
        assert!(d.next_message().is_err());

        // Trailing bytes after a message inside one frame.
        let mut long = ((good.len() - 4 + 8) as u32).to_be_bytes().to_vec();
        long.extend_from_slice(&good[4..]);
        long.extend_from_slice(&[0u8; 8]);
        let mut d = FrameDecoder::new(1024);
        d.push(&long).unwrap();
        assert!(matches!(
            d.next_message(),
            Err(FrameError::LengthMismatch { .. }) | Err(FrameError::BadMessage(_))
        ));
    }

    #[test]
    fn unknown_message_types_are_refused() {
        let mut good = encode_message(&sample(1), 1024).unwrap();
        good[5] = 42; // header byte 1 of the message: its type
        let mut d = FrameDecoder::new(1024);
        d.push(&good).unwrap();
        assert!(matches!(d.next_message(), Err(FrameError::BadMessage(_))));
    }

    fn bare(serial: u32) -> Message {
        let mut m = Message::new_signal("/org/example", "org.example.Iface", "Tick").unwrap();
        m.set_serial(serial);
        m
    }

    /// `msg` framed, with the first `from` byte after the fixed header turned into `to`.
    fn patched(msg: &Message, from: &[u8], to: &[u8]) -> Vec<u8> {
        let mut bytes = encode_message(msg, 4096).unwrap();
        let at = bytes
            .windows(from.len())
            .position(|w| w == from)
            .expect("pattern present");
        bytes[at..at + to.len()].copy_from_slice(to);
        bytes
    }

    // [utest->req~link.unsupported-types~1]
    #[test]
    fn file_descriptors_are_refused_at_decode() {
        // A `u` argument whose header signature now says `h`: libdbus demarshals it, and
        // before this check the dbus crate panicked re-appending it.
        let top = patched(
            &bare(1).append1(7u32),
            b"\x08\x01g\x00\x01u\x00",
            b"\x08\x01g\x00\x01h\x00",
        );
        // The same inside a variant, where only the body names the type.
        let inner = patched(
            &bare(2).append1(dbus::arg::Variant(7u32)),
            b"\x01u\x00\x00\x07",
            b"\x01h\x00\x00\x07",
        );
        for bytes in [top, inner] {
            let mut d = FrameDecoder::new(4096);
            d.push(&bytes).unwrap();
            match d.next_message() {
                Err(FrameError::BadMessage(e)) => assert!(e.contains("'h'"), "{e}"),
                other => panic!("fd accepted: {other:?}"),
            }
        }
        // A dict of variants (every PropertiesChanged) is walked without a panic; an fd
        // inside one is refused too.
        let mut props = dbus::arg::PropMap::new();
        props.insert("A".into(), dbus::arg::Variant(Box::new(7u32)));
        let dict = encode_message(&bare(4).append1(props), 4096).unwrap();
        assert!(decode_message(&dict[HEADER_LEN..]).is_ok());
        let mut props = dbus::arg::PropMap::new();
        props.insert("A".into(), dbus::arg::Variant(Box::new(7u32)));
        let fd_in_dict = patched(&bare(5).append1(props), b"\x01u\x00", b"\x01h\x00");
        assert!(decode_message(&fd_in_dict[HEADER_LEN..]).is_err());
        // Variants of other types still pass, and re-append cleanly.
        let ok = encode_message(&bare(3).append1(dbus::arg::Variant(7u32)), 4096).unwrap();
        let msg = decode_message(&ok[HEADER_LEN..]).unwrap();
        let mut copy = Message::new_signal("/a", "a.b", "C").unwrap();
        copy.append_items(&msg.get_items());
    }

    // [utest->req~link.framing~1]
    #[test]
    fn a_large_frame_gets_room_for_itself_not_a_doubling() {
        let big = Message::new_method_call("a.b", "/a", "a.b", "X")
            .map(|m| m.append1("x".repeat(36_000)));
        let mut big = big.unwrap();
        big.set_serial(1);
        let bytes = encode_message(&big, 1 << 20).unwrap();
        let mut d = FrameDecoder::new(1 << 20);
        for c in bytes.chunks(8192) {
            d.push(c).unwrap();
            assert!(d.buf.capacity() <= bytes.len(), "{}", d.buf.capacity());
        }
        let m = d.next_message().unwrap().unwrap();
        assert_eq!(m.read1::<&str>().unwrap().len(), 36_000);
        assert_eq!(d.buf.capacity(), 0);
    }

    #[test]
    fn incomplete_frame_waits() {
        let good = encode_message(&sample(1), 1024).unwrap();
        let mut d = FrameDecoder::new(1024);
        d.push(&good[..good.len() - 1]).unwrap();
        assert!(d.next_message().unwrap().is_none());
        d.push(&good[good.len() - 1..]).unwrap();
        assert!(d.next_message().unwrap().is_some());
    }

    #[test]
    fn serials_are_never_zero() {
        let c = SerialCounter(std::sync::atomic::AtomicU32::new(u32::MAX - 1));
        assert_eq!(c.next_serial(), u32::MAX);
        assert_eq!(c.next_serial(), 1);
    }
}
