//! Ctrl-C and SIGTERM: stop within a moment. The handler only sets a flag; a watcher
//! thread then shuts down every network connection relayup opened, which wakes every
//! blocked libssh2 or FTP call at once. Relays see their connection drop, which closes
//! their stdin: they remove what they staged and exit.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static SOCKETS: Mutex<Vec<TcpStream>> = Mutex::new(Vec::new());
/// Why the send was stopped, if not by a signal.
static REASON: Mutex<Option<String>> = Mutex::new(None);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the handlers (the sending side only; a relay just follows its stdin).
pub fn install() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    std::thread::spawn(|| loop {
        std::thread::sleep(Duration::from_millis(50));
        if INTERRUPTED.load(Ordering::SeqCst) {
            for s in SOCKETS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    });
}

/// Remembers a connection so an interrupt can cut it. The duplicate kept here holds
/// the connection open until relayup exits, so watch only control connections whose
/// end is signalled inside the protocol (SSH, the FTP control channel), never an FTP
/// data connection, whose close is the end-of-file.
pub fn watch(stream: &TcpStream) {
    if let Ok(dup) = stream.try_clone() {
        SOCKETS.lock().unwrap_or_else(|e| e.into_inner()).push(dup);
    }
}

/// Stops the whole send as an interrupt would, for `reason` (a host key problem on
/// one peer stops everything).
pub fn stop(reason: String) {
    let mut r = REASON.lock().unwrap_or_else(|e| e.into_inner());
    if r.is_none() && !INTERRUPTED.load(Ordering::SeqCst) {
        *r = Some(reason);
    }
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// The reason given to [`stop`]; `None` if a signal stopped the send.
pub fn reason() -> Option<String> {
    REASON.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The flag itself, for loops that check it between chunks.
pub fn flag() -> &'static AtomicBool {
    &INTERRUPTED
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
