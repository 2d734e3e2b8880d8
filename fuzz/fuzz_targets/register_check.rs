//! The handshake: the first frame's payload as the manager's connection thread sees it
//! (`decode_message` then `check_register`), and a Register call built from an arbitrary name,
//! which must be accepted exactly when the name is a valid node name.
#![no_main]

use hirte_common::bounds::MAX_FRAME_SIZE;
use hirte_common::frame::{decode_message, encode_message, HEADER_LEN};
use hirte_common::handshake::{check_register, register_call};
use hirte_common::names::validate_node_name;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hirte_common::sys::disable_libdbus_abort();
    if let Ok(m) = decode_message(data) {
        let _ = check_register(&m);
    }
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    // libdbus strings end at NUL; such a name can never be sent.
    if name.contains('\0') || name.len() > 4096 {
        return;
    }
    let Some(mut call) = register_call(name) else {
        return;
    };
    call.set_serial(1);
    let frame = encode_message(&call, MAX_FRAME_SIZE).expect("a small Register encodes");
    let back = decode_message(&frame[HEADER_LEN..]).expect("an encoded Register decodes");
    let verdict = check_register(&back);
    assert_eq!(
        verdict.is_ok(),
        validate_node_name(name).is_ok(),
        "{name:?}: {verdict:?}"
    );
});
