//! The manager's and the agent's receive path: bytes from a peer, in arbitrary chunks, into
//! `FrameDecoder`, then everything a daemon does with a decoded message.
//!
//! Input: byte 0 picks the frame bound, byte 1 the chunk size; the rest is the stream.
//!
//! Round-trip property: every message the decoder yields, framed again with `encode_message`,
//! decodes to the same message (type, header fields and body).
#![no_main]

use hirte_common::bounds::{MAX_FRAME_SIZE, MAX_HANDSHAKE_FRAME_SIZE};
use hirte_common::frame::{decode_message, encode_message, FrameDecoder, FrameError, HEADER_LEN};
use hirte_common::handshake::check_register;
use hirte_common::protocol::signature_of;
use libfuzzer_sys::fuzz_target;

/// What a message is, for comparing it with its round trip.
fn shape(m: &dbus::Message) -> String {
    format!(
        "{:?} {:?} {:?} {:?} {:?} {:?} {:?}",
        m.msg_type(),
        m.path(),
        m.interface(),
        m.member(),
        m.destination(),
        m.get_reply_serial(),
        m.get_items()
    )
}

fuzz_target!(|data: &[u8]| {
    hirte_common::sys::disable_libdbus_abort();
    let (Some(&b0), Some(&b1)) = (data.first(), data.get(1)) else {
        return;
    };
    let max = match b0 % 3 {
        0 => 64,
        1 => MAX_HANDSHAKE_FRAME_SIZE,
        _ => MAX_FRAME_SIZE,
    };
    let chunk = usize::from(b1).max(1);
    let mut d = FrameDecoder::new(max);
    for part in data[2..].chunks(chunk) {
        if d.push(part).is_err() {
            return;
        }
        loop {
            let payload = match d.next_payload() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(_) => return,
            };
            match decode_message(&payload).map(Some) {
                Ok(Some(m)) => {
                    let _ = check_register(&m);
                    let _ = signature_of(&m);
                    let _ = m.get_items();
                    let _ = m.read2::<u32, &str>();
                    let _ = (m.member(), m.interface(), m.path(), m.get_reply_serial());
                    let _ = m.msg_type();
                    // [utest->req~fault.fuzz~1]
                    if m.get_serial().is_some_and(|s| s != 0) {
                        let frame = match encode_message(&m, MAX_FRAME_SIZE) {
                            Ok(f) => f,
                            // Re-marshalled a little larger than the largest frame: nothing
                            // the daemons would send.
                            Err(FrameError::OutgoingTooLarge { .. }) => continue,
                            Err(e) => panic!("a decoded message does not encode again: {e}"),
                        };
                        let back = decode_message(&frame[HEADER_LEN..])
                            .expect("an encoded message decodes");
                        assert_eq!(shape(&back), shape(&m), "round trip changed the message");
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(
            d.buffered() < HEADER_LEN + max,
            "decoder holds {} bytes",
            d.buffered()
        );
    }
});
