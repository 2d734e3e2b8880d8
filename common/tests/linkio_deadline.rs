//! `FrameLink::write_frame` against a peer that reads slowly but steadily: the whole frame
//! must be written within `LINK_WRITE_TIMEOUT`, not each `write()`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

use hirte_common::bounds::LINK_WRITE_TIMEOUT;
use hirte_common::linkio::{prepare, FrameLink};
use hirte_common::stream::LinkStream;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

// [utest->req~link.write-deadline~1]
#[test]
fn a_frame_to_a_slowly_reading_peer_fails_after_the_write_timeout() {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let stream = LinkStream::Unix(ours);
    prepare(&stream).unwrap();
    let mut link = FrameLink::plain(stream, 8 << 20);
    // The peer takes 16 KiB every 100 ms: every write() progresses, the frame takes ~25 s.
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        while !stop2.load(Ordering::Relaxed) {
            if matches!(theirs.read(&mut buf), Ok(0) | Err(_)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let frame = vec![0u8; 4 << 20];
        let result = link.write_frame(&frame).map_err(|e| e.to_string());
        let _ = tx.send((result, start.elapsed()));
        link.close();
    });
    let tolerance = Duration::from_millis(1500);
    let outcome = rx.recv_timeout(LINK_WRITE_TIMEOUT + tolerance);
    stop.store(true, Ordering::Relaxed);
    let (result, took) = outcome.unwrap_or_else(|_| {
        panic!(
            "write_frame still writing after {:?} (LINK_WRITE_TIMEOUT {:?})",
            start.elapsed(),
            LINK_WRITE_TIMEOUT
        )
    });
    let err = result.expect_err("a 4 MiB frame to a 160 KiB/s reader cannot be written in 5 s");
    assert!(err.contains("not written within"), "{err}");
    assert!(
        took >= LINK_WRITE_TIMEOUT - Duration::from_millis(100),
        "{took:?}"
    );
    println!("write_frame gave up after {took:?}: {err}");
    let _ = reader.join();
}
