//! Relaying a large answer costs the bytes of the reply, not a generic tree of it: a
//! counting allocator measures what Rust allocates while `copy_answer` copies an answer
//! just under the frame limit made of 160,000 small properties (libdbus' own buffers, which
//! hold the reply itself, go through `malloc` and are not counted).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
// test code
// The counting allocator below must implement `GlobalAlloc`, an unsafe trait; it only
// counts and hands every call to `System` unchanged.
#![allow(unsafe_code)]

use dbus::arg::{PropMap, RefArg, Variant};
use dbus::Message;
use hirte_common::bounds::MAX_FRAME_SIZE;
use hirte_common::protocol::copy_answer;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = NOW.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(now, Ordering::SeqCst);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        NOW.fetch_sub(layout.size(), Ordering::SeqCst);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn bytes(m: &Message) -> Vec<u8> {
    let mut v = Vec::new();
    m.marshal(|b| {
        v.extend_from_slice(b);
        Ok::<(), ()>(())
    })
    .unwrap();
    v
}

fn call() -> Message {
    let mut m = Message::new_method_call("a.b", "/a", "a.b", "GetUnitProperties").unwrap();
    m.set_serial(1);
    m
}

// [utest->req~bounds.static-decode~1]
#[test]
fn relaying_an_answer_of_160k_properties_allocates_no_tree() {
    let mut props = PropMap::new();
    for i in 0..160_000u32 {
        props.insert(format!("p{i}"), Variant(Box::new(i) as Box<dyn RefArg>));
    }
    let mut answer = call().method_return().append1(props);
    answer.set_serial(2);
    let wire = bytes(&answer);
    let size = wire.len();
    assert!(size > 2 * 1024 * 1024 && size < MAX_FRAME_SIZE, "{size}");
    let answer = Message::demarshal(&wire).unwrap();
    drop(wire);
    let base = NOW.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let reply = copy_answer(&call(), &answer);
    let grew = PEAK.load(Ordering::SeqCst) - base;
    assert!(bytes(&reply).len().abs_diff(size) < 256);
    // A `MessageItem` tree of these properties takes well over 30 MiB.
    assert!(grew < 64 * 1024, "copying allocated {grew} bytes");
}
