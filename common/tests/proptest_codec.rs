//! Property tests of the sans-IO parsers that face untrusted input: the frame codec, the
//! Register check, the configuration parser, time spans and node-name escaping. They run in
//! the normal test suite; `fuzz/` holds coverage-guided targets for the same functions.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

use std::time::Duration;

use dbus::arg::messageitem::MessageItem;
use dbus::Message;
use hirte_common::bounds::{MAX_FRAME_SIZE, MAX_HANDSHAKE_FRAME_SIZE};
use hirte_common::config::{parse_text, AgentConfig, ConfigError, ManagerConfig};
use hirte_common::frame::{decode_message, encode_message, FrameDecoder, FrameError, HEADER_LEN};
use hirte_common::handshake::{check_register, register_call};
use hirte_common::names::{escape_path_element, unescape_path_element, validate_node_name};
use hirte_common::protocol::signature_of;
use hirte_common::timespan::{format_timespan, parse_timespan};
use proptest::prelude::*;

/// `cases` per property, a fixed seed (the same inputs on every run, so CI is repeatable)
/// unless `PROPTEST_RNG_SEED` chooses another, and no regression files in the source tree
/// (a failure prints its minimal input; keep it as a fixed test case).
fn config(cases: u32) -> ProptestConfig {
    let d = ProptestConfig::default();
    let rng_seed = match d.rng_seed {
        proptest::test_runner::RngSeed::Random => {
            proptest::test_runner::RngSeed::Fixed(0x48_6972_7465)
        }
        chosen => chosen,
    };
    ProptestConfig {
        cases,
        rng_seed,
        failure_persistence: None,
        ..d
    }
}

/// The daemons run with libdbus' argument checks non-fatal; so do these tests.
fn daemon_conditions() {
    hirte_common::sys::disable_libdbus_abort();
}

// ---- frame codec ---------------------------------------------------------------------------

/// What a generated message carries.
#[derive(Debug, Clone)]
enum Arg {
    Str(String),
    U32(u32),
    Bytes(Vec<u8>),
    Strs(Vec<String>),
}

fn arg() -> impl Strategy<Value = Arg> {
    prop_oneof![
        ".{0,40}".prop_map(Arg::Str),
        any::<u32>().prop_map(Arg::U32),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Arg::Bytes),
        proptest::collection::vec(".{0,8}", 0..6).prop_map(Arg::Strs),
    ]
}

fn member() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9_]{0,20}"
}

/// A method call or signal with arbitrary arguments and a non-zero serial.
fn message() -> impl Strategy<Value = Message> {
    (
        any::<bool>(),
        member(),
        proptest::collection::vec(arg(), 0..5),
        1..=u32::MAX,
    )
        .prop_map(|(is_call, member, args, serial)| {
            let mut m = if is_call {
                Message::new_method_call(
                    "org.containers.hirte.Link",
                    "/org/containers/hirte/internal/agent",
                    "org.containers.hirte.internal.Agent",
                    member,
                )
                .unwrap()
            } else {
                Message::new_signal(
                    "/org/containers/hirte/internal/agent",
                    "org.containers.hirte.internal.Agent",
                    member,
                )
                .unwrap()
            };
            for a in args {
                m = match a {
                    Arg::Str(s) => m.append1(s),
                    Arg::U32(u) => m.append1(u),
                    Arg::Bytes(b) => m.append1(b),
                    Arg::Strs(v) => m.append1(v),
                };
            }
            m.set_serial(serial);
            m
        })
}

/// Cut points that split `len` bytes into chunks (sorted, deduplicated, inside the range).
fn chunks(len: usize, cuts: &[usize]) -> Vec<(usize, usize)> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| (w[0], w[1])).collect()
}

/// Pushes `bytes` in the given chunks and drains messages after each push, as the link
/// threads do; stops at the first error. Checks the buffer bound on the way.
fn feed(
    decoder: &mut FrameDecoder,
    max: usize,
    bytes: &[u8],
    cuts: &[usize],
) -> (Vec<Message>, Option<FrameError>) {
    let mut got = Vec::new();
    for (a, b) in chunks(bytes.len(), cuts) {
        if let Err(e) = decoder.push(&bytes[a..b]) {
            return (got, Some(e));
        }
        loop {
            match decoder.next_message() {
                Ok(Some(m)) => got.push(m),
                Ok(None) => break,
                Err(e) => return (got, Some(e)),
            }
        }
        // Drained: what is left is at most one incomplete frame within the bound.
        assert!(
            decoder.buffered() < HEADER_LEN + max,
            "{} bytes buffered with a bound of {max}",
            decoder.buffered()
        );
    }
    (got, None)
}

/// Everything a daemon does with a decoded message that came from a peer.
fn inspect(m: &Message) {
    let _ = check_register(m);
    let _ = signature_of(m);
    let _ = m.get_items();
    let _ = m.read1::<&str>();
    let _ = m.read2::<u32, &str>();
    let _ = (
        m.member(),
        m.interface(),
        m.path(),
        m.get_reply_serial(),
        m.msg_type(),
    );
}

proptest! {
    #![proptest_config(config(256))]

    /// Any batch of messages survives encode -> arbitrary chunking -> decode unchanged.
    // [utest->req~fault.fuzz~1]
    // [utest->req~link.framing~1]
    #[test]
    fn proptest_frame_roundtrip_in_any_chunking(
        msgs in proptest::collection::vec(message(), 1..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        daemon_conditions();
        let mut bytes = Vec::new();
        for m in &msgs {
            let frame = encode_message(m, MAX_FRAME_SIZE).unwrap();
            let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
            prop_assert_eq!(len + HEADER_LEN, frame.len());
            bytes.extend(frame);
        }
        let mut d = FrameDecoder::new(MAX_FRAME_SIZE);
        let (got, err) = feed(&mut d, MAX_FRAME_SIZE, &bytes, &cuts);
        prop_assert!(err.is_none(), "{:?}", err);
        prop_assert_eq!(got.len(), msgs.len());
        for (a, b) in msgs.iter().zip(&got) {
            prop_assert_eq!(a.get_serial(), b.get_serial());
            prop_assert_eq!(a.msg_type(), b.msg_type());
            prop_assert_eq!(a.member(), b.member());
            prop_assert_eq!(a.get_items(), b.get_items());
        }
        prop_assert_eq!(d.buffered(), 0);
    }

    /// Arbitrary bytes, in arbitrary chunks and under any bound, give messages or a typed error.
    // [utest->req~fault.fuzz~1]
    // [utest->req~link.bad-frame~1]
    #[test]
    fn proptest_frame_decoder_never_panics_on_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
        max in prop_oneof![Just(16usize), Just(MAX_HANDSHAKE_FRAME_SIZE), Just(MAX_FRAME_SIZE)],
    ) {
        daemon_conditions();
        let mut d = FrameDecoder::new(max);
        let (got, _err) = feed(&mut d, max, &bytes, &cuts);
        for m in &got {
            inspect(m);
        }
        let _ = decode_message(&bytes);
    }

    /// Valid frames with a few bytes changed: the decoder refuses or accepts, never panics,
    /// and whatever it accepts the daemons can inspect.
    // [utest->req~fault.fuzz~1]
    #[test]
    fn proptest_frame_decoder_survives_mutated_messages(
        m in message(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        register in any::<bool>(),
    ) {
        daemon_conditions();
        let m = if register {
            let mut r = register_call("agent1").unwrap();
            r.set_serial(1);
            r
        } else {
            m
        };
        let mut frame = encode_message(&m, MAX_FRAME_SIZE).unwrap();
        let n = frame.len();
        for (pos, val) in flips {
            // Leave the length prefix alone half of the time, so the payload gets parsed.
            let at = if val & 1 == 0 { HEADER_LEN + pos % (n - HEADER_LEN) } else { pos % n };
            frame[at] ^= val | 1;
        }
        let mut d = FrameDecoder::new(MAX_FRAME_SIZE);
        let (got, _) = feed(&mut d, MAX_FRAME_SIZE, &frame, &[]);
        for m in &got {
            inspect(m);
        }
    }

    /// The Register check accepts exactly Register(s) with a valid node name.
    // [utest->req~fault.fuzz~1]
    // [utest->req~link.register-first~1]
    #[test]
    // (libdbus strings end at NUL: a name with one cannot be sent, the dbus crate cuts it.)
    fn proptest_register_check_matches_the_node_name_rule(name in "[^\\x00]{0,80}", serial in 1..=u32::MAX) {
        daemon_conditions();
        let mut call = register_call(&name).unwrap();
        call.set_serial(serial);
        let frame = encode_message(&call, MAX_FRAME_SIZE).unwrap();
        let decoded = decode_message(&frame[HEADER_LEN..]).unwrap();
        let verdict = check_register(&decoded);
        prop_assert_eq!(verdict.is_ok(), validate_node_name(&name).is_ok());
        if let Ok(n) = verdict {
            prop_assert_eq!(n, name);
        }
    }
}

// ---- configuration --------------------------------------------------------------------

const KEYS: &[&str] = &[
    "ManagerPort",
    "ManagerAddress",
    "AllowedNodeNames",
    "LogLevel",
    "LogTarget",
    "LogIsQuiet",
    "NodeHeartbeatThreshold",
    "AgentCallTimeout",
    "AllowExec",
    "NodeName",
    "ManagerHost",
    "HeartbeatInterval",
    "ReconnectInterval",
    "ManagerHeartbeatThreshold",
    "Bogus",
];

const VALUES: &[&str] = &[
    "",
    "0",
    "1",
    "2020",
    "65536",
    "-1",
    "yes",
    "maybe",
    "5s",
    "500ms",
    "1min 30s",
    "99999999999999999999d",
    "1.5h",
    "debug",
    "stderr",
    "a,b,c",
    "bad name",
    "127.0.0.1",
    "::1",
    "tcp:host=h,port=1",
    "\"quoted\"",
    "'single'",
    "[\"a\", \"b\"]",
    "[1, [2]]",
    "{ a = 1 }",
    "\"unterminated",
    "[",
    "true",
    "1e400",
];

/// Lines shaped like a configuration file, plus arbitrary text.
fn config_line() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (prop::sample::select(KEYS), prop::sample::select(VALUES), " {0,2}", " {0,2}")
            .prop_map(|(k, v, a, b)| format!("{k}{a}={b}{v}")),
        2 => (prop::sample::select(KEYS), ".{0,20}").prop_map(|(k, v)| format!("{k}={v}")),
        1 => prop::sample::select(&["[hirte]", "[hirte-agent]", "[other]", "[hirte", "[ \"hirte\" ]", "# c", "; c", ""][..])
            .prop_map(str::to_string),
        1 => ".{0,30}",
    ]
}

/// Parses `text` as both daemons would and checks the error contract; returns the errors.
fn check_config(text: &str) -> Result<Vec<String>, TestCaseError> {
    let mut messages = Vec::new();
    let lines = text.lines().count().max(1);
    for (section, manager) in [("hirte", true), ("hirte-agent", false)] {
        let res: Result<(), ConfigError> =
            parse_text(text, "f.conf", section).and_then(|entries| {
                for e in &entries {
                    prop_assert_no_panic_origin(e.at.line, lines);
                }
                if manager {
                    let mut c = ManagerConfig::default();
                    for e in &entries {
                        c.apply(e)?;
                    }
                    c.validate()
                } else {
                    let mut c = AgentConfig::default();
                    for e in &entries {
                        c.apply(e)?;
                    }
                    let _ = c.effective_manager_timeout();
                    c.validate()
                }
            });
        if let Err(e) = res {
            let msg = e.to_string();
            if !matches!(e, ConfigError::Invalid { .. }) {
                // Every error about the text names the file and a line that exists.
                let rest = msg.strip_prefix("f.conf:");
                prop_assert!(rest.is_some(), "{}", msg);
                let n: usize = rest
                    .and_then(|r| r.split(':').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                prop_assert!(n >= 1 && n <= lines, "line {} of {}: {}", n, lines, msg);
            }
            messages.push(msg);
        }
    }
    Ok(messages)
}

fn prop_assert_no_panic_origin(line: usize, lines: usize) {
    assert!(
        line >= 1 && line <= lines,
        "entry on line {line} of {lines}"
    );
}

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary text never panics the parser; every error names `f.conf:LINE`.
    // [utest->req~fault.fuzz~1]
    // [utest->req~config.errors~1]
    #[test]
    fn proptest_config_parser_never_panics_and_errors_name_a_line(text in ".{0,300}") {
        check_config(&text)?;
    }

    /// Files made of plausible lines (known keys, odd values, sections, comments).
    // [utest->req~fault.fuzz~1]
    // [utest->req~config.errors~1]
    #[test]
    fn proptest_config_structured_files_keep_the_error_contract(
        lines in proptest::collection::vec(config_line(), 0..12),
        section_first in any::<bool>(),
    ) {
        let mut text = String::new();
        if section_first {
            text.push_str("[hirte]\n");
        }
        for l in &lines {
            text.push_str(l);
            text.push('\n');
        }
        check_config(&text)?;
        let agent_text = text.replacen("[hirte]\n", "[hirte-agent]\n", 1);
        check_config(&agent_text)?;
    }

    /// A daemon prints its configuration error as `hirte: MESSAGE`: one line, whatever the
    /// file holds.
    // [utest->req~fault.fuzz~1]
    // [utest->req~config.errors~1]
    #[test]
    fn proptest_config_errors_are_one_line(
        lines in proptest::collection::vec(config_line(), 1..6),
    ) {
        let mut text = String::from("[hirte]\n");
        for l in &lines {
            text.push_str(l);
            text.push('\n');
        }
        for msg in check_config(&text)? {
            prop_assert!(!msg.contains('\n'), "a multi-line error: {:?}", msg);
        }
    }

    /// Time spans: arbitrary text never panics; what is formatted parses back exactly.
    // [utest->req~fault.fuzz~1]
    // [utest->req~config.timespan~1]
    #[test]
    fn proptest_timespan_parse_never_panics_and_format_roundtrips(
        text in "[0-9a-z. \u{b5}]{0,24}",
        micros in 0u64..(400 * 24 * 3600 * 1_000_000),
        secs in any::<u32>(),
        ms in any::<u32>(),
    ) {
        let _ = parse_timespan(&text);
        let d = Duration::from_micros(micros);
        prop_assert_eq!(parse_timespan(&format_timespan(d)), Ok(d));
        prop_assert_eq!(parse_timespan(&secs.to_string()), Ok(Duration::from_secs(u64::from(secs))));
        prop_assert_eq!(parse_timespan(&format!("{ms}ms")), Ok(Duration::from_millis(u64::from(ms))));
    }

    /// Node names: validation never panics; escaping to an object path element reverses.
    // [utest->req~fault.fuzz~1]
    // [utest->req~common.path-escape~1]
    #[test]
    fn proptest_node_name_escape_roundtrips(name in ".{0,70}") {
        let _ = validate_node_name(&name);
        let esc = escape_path_element(&name);
        prop_assert!(esc.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{}", esc);
        prop_assert_eq!(unescape_path_element(&esc), Some(name));
    }
}

/// A few fixed inputs the generators are unlikely to hit, kept as plain regression cases.
// [utest->req~fault.fuzz~1]
#[test]
fn proptest_codec_fixed_edge_cases() {
    daemon_conditions();
    for bytes in [
        vec![0u8; 4],
        vec![0xff; 4],
        vec![0, 0, 0, 1, b'l'],
        [
            &16u32.to_be_bytes()[..],
            b"l\x01\x00\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00",
        ]
        .concat(),
    ] {
        let mut d = FrameDecoder::new(MAX_HANDSHAKE_FRAME_SIZE);
        let _ = feed(&mut d, MAX_HANDSHAKE_FRAME_SIZE, &bytes, &[1, 3]);
    }
    let items: Vec<MessageItem> = Vec::new();
    let mut m = Message::new_signal("/a", "a.b", "C").unwrap();
    m.append_items(&items);
    m.set_serial(u32::MAX);
    let f = encode_message(&m, MAX_FRAME_SIZE).unwrap();
    assert_eq!(
        decode_message(&f[HEADER_LEN..]).unwrap().get_serial(),
        Some(u32::MAX)
    );
    assert!(matches!(
        encode_message(&m, 8),
        Err(FrameError::OutgoingTooLarge { .. })
    ));
    for text in [
        "[hirte]\nManagerPort=\u{0}\n",
        "[hirte]\r\nManagerPort=1\r\n",
        "\u{feff}[hirte]\n",
    ] {
        let _ = check_config(text);
    }
}

/// Found by the fuzzer (`fuzz/corpus/register_check/crash-message-type-39`): a Register frame
/// whose D-Bus message type byte is not 1-4 decodes (libdbus accepts unknown types), and then
/// `check_register` must refuse it like any other wrong first message instead of panicking
/// in the dbus crate's `Message::msg_type` ("Invalid message type").
// [utest->req~fault.fuzz~1]
// [utest->req~link.register-first~1]
#[test]
fn proptest_codec_unknown_message_type_is_refused_not_a_panic() {
    daemon_conditions();
    let mut call = register_call("agent1").unwrap();
    call.set_serial(1);
    let mut frame = encode_message(&call, MAX_FRAME_SIZE).unwrap();
    let mut outcomes = Vec::new();
    for t in [0u8, 5, 39, 42, 255] {
        frame[HEADER_LEN + 1] = t;
        let payload = frame[HEADER_LEN..].to_vec();
        let outcome = std::panic::catch_unwind(move || match decode_message(&payload) {
            Err(e) => format!("refused by the decoder: {e}"),
            Ok(m) => match check_register(&m) {
                Ok(n) => format!("ACCEPTED as Register({n})"),
                Err(e) => format!("refused by check_register: {e}"),
            },
        });
        match outcome {
            Ok(text) => outcomes.push((t, text)),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                outcomes.push((t, format!("PANIC: {msg}")));
            }
        }
    }
    let bad: Vec<_> = outcomes
        .iter()
        .filter(|(_, o)| o.starts_with("PANIC") || o.starts_with("ACCEPTED"))
        .collect();
    assert!(bad.is_empty(), "message types: {outcomes:?}");
}
