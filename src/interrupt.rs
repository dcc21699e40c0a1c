//! Ctrl-C and SIGTERM: stop within a moment. The signal handlers only set flags; a
//! thread woken by the signal then shuts down every network connection relayup
//! opened, which wakes every blocked libssh2 or FTP call at once. Relays see their
//! connection drop, which closes their stdin: they remove what they staged and exit.
//! A second signal while that clean-up runs ends the process at once, in the handler
//! itself, so nothing that hangs can hold it. How the signals are caught on each
//! system is [`crate::platform::on_interrupt`]'s business.

use crate::platform::{InterruptFlags, SIGINT};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Set by the first signal: from then on the next one exits at once.
static ARMED: AtomicBool = AtomicBool::new(false);
/// The number of the signal that stopped the send; 0 if none did.
static SIGNAL: AtomicUsize = AtomicUsize::new(0);
static SOCKETS: Mutex<Vec<TcpStream>> = Mutex::new(Vec::new());
/// Why the send was stopped, if not by a signal.
static REASON: Mutex<Option<String>> = Mutex::new(None);

/// Installs the handlers (the sending side only; a relay just follows its stdin).
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = register() {
            // Without handlers Ctrl-C still stops relayup (the default action); only
            // the clean-up and the resume hint are lost.
            crate::progress::warn(&format!("cannot install signal handlers: {e}"));
        }
    });
}

fn register() -> std::io::Result<()> {
    let flags = InterruptFlags {
        armed: &ARMED,
        signal: &SIGNAL,
        interrupted: &INTERRUPTED,
    };
    crate::platform::on_interrupt(flags, cut_all)
}

/// Shuts down every watched connection (blocked calls on them fail at once).
fn cut_all() {
    INTERRUPTED.store(true, Ordering::SeqCst);
    for s in SOCKETS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
}

/// Remembers a connection so an interrupt can cut it. The duplicate kept here holds
/// the connection open until relayup exits, so watch only control connections whose
/// end is signalled inside the protocol (SSH, the FTP control channel), never an FTP
/// data connection, whose close is the end-of-file.
pub fn watch(stream: &TcpStream) {
    if let Ok(dup) = stream.try_clone() {
        let mut all = SOCKETS.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock that `cut_all` takes: a connection opened just after
        // the interrupt is cut too.
        if INTERRUPTED.load(Ordering::SeqCst) {
            let _ = dup.shutdown(std::net::Shutdown::Both);
        }
        all.push(dup);
    }
}

/// Stops the whole send as an interrupt would, for `reason` (a host key problem on
/// one peer stops everything).
pub fn stop(reason: String) {
    {
        let mut r = REASON.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() && !INTERRUPTED.load(Ordering::SeqCst) {
            *r = Some(reason);
        }
    }
    cut_all();
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

/// The exit code for a send stopped by a signal: 128 + its number, as a shell reports
/// a process killed by it (130 for Ctrl-C, 143 for SIGTERM).
pub fn exit_code() -> u8 {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => 128 + SIGINT as u8,
        sig => 128u8.saturating_add(sig as u8),
    }
}
