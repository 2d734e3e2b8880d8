//! The manager's and the agent's receive path: bytes from a peer, in arbitrary chunks, into
//! `FrameDecoder`, then everything a daemon does with a decoded message.
//!
//! Input: byte 0 picks the frame bound, byte 1 the chunk size; the rest is the stream.
//!
//! With `HIRTE_FUZZ_SKIP_KNOWN=1` in the environment, payloads of a D-Bus message type other
//! than 1-4 are skipped (a known crash, see docs/reliability.md), to look for others.
#![no_main]

use hirte_common::bounds::{MAX_FRAME_SIZE, MAX_HANDSHAKE_FRAME_SIZE};
use hirte_common::frame::{decode_message, FrameDecoder, HEADER_LEN};
use hirte_common::handshake::check_register;
use hirte_common::protocol::signature_of;
use libfuzzer_sys::fuzz_target;

fn skip_known() -> bool {
    static SKIP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SKIP.get_or_init(|| std::env::var_os("HIRTE_FUZZ_SKIP_KNOWN").is_some())
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
            if skip_known() && !matches!(payload.get(1), Some(1..=4)) {
                return;
            }
            match decode_message(&payload).map(Some) {
                Ok(Some(m)) => {
                    let _ = check_register(&m);
                    let _ = signature_of(&m);
                    let _ = m.get_items();
                    let _ = m.read2::<u32, &str>();
                    let _ = (m.member(), m.interface(), m.path(), m.get_reply_serial());
                    let _ = m.msg_type();
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
