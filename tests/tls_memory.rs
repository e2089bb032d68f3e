//! What an idle TLS session keeps on the heap once its handshake is done, counted by a
//! counting allocator (this test binary's own): the figure `bench/tls.sh` reports per idle
//! connection rests on it, and a rustls upgrade or a change of ours that made every idle TLS
//! connection keep a buffer would show here.

use connwarden_test_common as common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

/// Counts the bytes allocated and not yet freed.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        LIVE.fetch_add(size as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn an_idle_tls_session_keeps_no_record_buffer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = common::certs::Ca::new("memory CA");
    let (cert, key) = common::certs::write_pair(dir.path(), "server", &ca.issue("server", false));
    let config = connwarden::Config {
        tls_cert: Some(cert),
        tls_key: Some(key),
        ..connwarden::Config::default()
    };
    let server_config = connwarden::tls::server_config(&config)
        .expect("usable pair")
        .expect("TLS on");
    let client_config = common::certs::client_config(&ca, None);

    const SESSIONS: isize = 100;
    let mut sessions = Vec::new();
    let mut clients = Vec::new();
    let before = LIVE.load(Ordering::Relaxed);
    for _ in 0..SESSIONS {
        let server = rustls::server::UnbufferedServerConnection::new(Arc::clone(&server_config))
            .expect("session");
        let mut session = Box::new(connwarden::tls::TlsSession::new(server));
        let name = "localhost".try_into().expect("name");
        let mut client =
            rustls::ClientConnection::new(Arc::clone(&client_config), name).expect("client");
        let (mut plain, mut out) = (bytes::BytesMut::new(), bytes::BytesMut::new());
        // Flights back and forth until the server has the client's Finished.
        for _ in 0..4 {
            let mut flight = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut flight).expect("client output");
            }
            session.incoming.extend_from_slice(&flight);
            session.drive(&mut plain, &mut out).expect("server side");
            if !out.is_empty() {
                client.read_tls(&mut &out[..]).expect("client input");
                client.process_new_packets().expect("client side");
                out = bytes::BytesMut::new();
            }
        }
        assert!(!session.is_handshaking() && !client.is_handshaking());
        assert_eq!(session.incoming.capacity(), 0, "no record buffer kept");
        sessions.push(session);
        clients.push(client);
    }
    let with_clients = LIVE.load(Ordering::Relaxed);
    let client_bytes = {
        drop(clients);
        with_clients - LIVE.load(Ordering::Relaxed)
    };
    let per_session = (LIVE.load(Ordering::Relaxed) - before) / SESSIONS;
    eprintln!(
        "an idle server session: {per_session} bytes of heap (a rustls client: {})",
        client_bytes / SESSIONS
    );
    // Measured 3,264 bytes: the boxed session (~1.2 KB) and rustls's traffic keys and state.
    // The buffered API kept 7,368 (its 4 KiB record buffer among them).
    assert!(per_session <= 4096, "{per_session} bytes per idle session");
}
