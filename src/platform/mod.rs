//! What differs between operating systems, behind a few small functions: the rest of
//! relayup calls these and names no OS of its own. `unix.rs` is the behaviour relayup
//! has on Linux, macOS and the BSDs; `windows.rs` is the same on Windows, where only
//! the client's side is meant to run so far (the functions a relay alone uses still
//! build there, and each says what it does not check yet).

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::fs::{Metadata, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize};

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as imp;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as imp;

/// The home directory: `$HOME`; on Windows, `%USERPROFILE%` where `HOME` is not set.
pub fn home_dir() -> Option<PathBuf> {
    imp::home_dir()
}

/// What to say when [`home_dir`] finds none.
pub const HOME_UNSET: &str = imp::HOME_UNSET;

/// The directory that holds `relayup/peers.toml`: `$XDG_CONFIG_HOME`, else
/// `~/.config`; on Windows, `%APPDATA%` (the roaming profile), else
/// `~\AppData\Roaming`.
pub fn config_base() -> anyhow::Result<PathBuf> {
    imp::config_base()
}

/// The directory that holds `relayup/`, the journal of unfinished sends and their
/// locks: `$XDG_STATE_HOME`, else `~/.local/state`; on Windows, `%LOCALAPPDATA%`
/// (this machine only: the locks name its processes), else `~\AppData\Local`.
pub fn state_base() -> anyhow::Result<PathBuf> {
    imp::state_base()
}

/// A relay's staging dir when its peer's config names none: `~/.cache/relayup`; on
/// Windows `%LOCALAPPDATA%\relayup\staging`.
pub fn default_staging() -> anyhow::Result<PathBuf> {
    imp::default_staging()
}

/// `path` as the peer's SFTP server names it, for the client to stage into: as it is
/// on Unix; on Windows `/C:/Users/…` (Windows' OpenSSH SFTP form), from `C:\Users\…`
/// (or `\\?\C:\…`).
pub fn sftp_path(path: &Path) -> String {
    imp::sftp_path(path)
}

/// The local user's name, as ssh uses it by default: `$USER`, else the password
/// database; on Windows, `%USERNAME%`.
pub fn current_user() -> Option<String> {
    imp::current_user()
}

/// This machine's host name as the system gives it, unchecked.
pub fn hostname() -> Option<String> {
    imp::hostname()
}

/// This machine's own id as the system keeps it, unchecked and not to be shown to
/// others: `/etc/machine-id`; on Windows, the `MachineGuid` that Windows sets up at
/// install time (`HKLM\SOFTWARE\Microsoft\Cryptography`). `None` where there is none.
pub fn machine_id() -> Option<String> {
    imp::machine_id()
}

/// Whether process `pid` of this machine may still be running: `false` only when it
/// surely is not (a pid that cannot be asked about counts as running).
pub fn may_be_running(pid: u32) -> bool {
    imp::may_be_running(pid)
}

/// Whether a file is for its owner's eyes only (a password file): on Unix, no
/// permission bit for group or others. On Windows every file passes: its ACL is not
/// checked yet.
pub fn is_private_file(meta: &Metadata) -> bool {
    imp::is_private_file(meta)
}

/// Why a directory that is there already is not one to stage parts in: it is another
/// account's, or others can write into it (`belongs to uid U with mode M`). `None` if
/// it is fine. On Windows, always `None`: owner and ACL are not checked yet.
pub fn private_dir_problem(meta: &Metadata) -> Option<String> {
    imp::private_dir_problem(meta)
}

/// Creates one directory (not its parents) that only its owner may enter: mode 0700
/// on Unix. On Windows it inherits its parent's ACL.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    imp::create_private_dir(path)
}

/// Makes a file that `opts` creates readable by its owner only: mode 0600 on Unix. On
/// Windows it inherits its directory's ACL.
pub fn owner_only(opts: &mut OpenOptions) -> &mut OpenOptions {
    imp::owner_only(opts)
}

/// The bytes free to this user on the file system that holds `dir`.
pub fn free_space(dir: &Path) -> Option<u64> {
    imp::free_space(dir)
}

/// A path's name as bytes, losing nothing, to keep in a file and read back on this
/// same kind of system with [`os_string_from_bytes`]: on Unix the name's own bytes;
/// on Windows its UTF-16 code units, little-endian.
pub fn os_str_bytes(s: &OsStr) -> Cow<'_, [u8]> {
    imp::os_str_bytes(s)
}

/// The inverse of [`os_str_bytes`]; `None` for bytes it cannot have made.
pub fn os_string_from_bytes(bytes: Vec<u8>) -> Option<OsString> {
    imp::os_string_from_bytes(bytes)
}

/// A local name as the bytes a POSIX shell would use for it: on Unix its own bytes;
/// on Windows its UTF-8 text, with U+FFFD for a lone surrogate (which no such shell
/// can write).
pub fn shell_bytes(s: &OsStr) -> Cow<'_, [u8]> {
    imp::shell_bytes(s)
}

/// No core dump of this process, and no reading of its memory by its own user where
/// the system can forbid it (Linux: `PR_SET_DUMPABLE` 0). Elsewhere it does nothing.
pub fn no_core_dumps() {
    imp::no_core_dumps()
}

/// The atomics an interrupt sets, for [`on_interrupt`].
pub struct InterruptFlags {
    /// Set by the first interrupt: the next one exits at once.
    pub armed: &'static AtomicBool,
    /// The number of the signal that came last.
    pub signal: &'static AtomicUsize,
    pub interrupted: &'static AtomicBool,
}

/// Catches the interrupts that stop a send: SIGINT and SIGTERM on Unix; on Windows
/// Ctrl-C (as SIGINT), Ctrl-Break (as SIGBREAK, 21) and the console being closed or
/// the user logging off (as SIGTERM). On one while `flags.armed` is set, the process
/// exits at once with code 128 + the signal's number, whatever else is running.
/// Otherwise the signal's number goes into `flags.signal`, `flags.armed` and
/// `flags.interrupted` are set, and soon after `wake` runs on a thread of its own,
/// outside any signal handler: it may lock and do I/O.
///
/// On Unix the handlers (signal-hook) only store into the atomics and a signal-hook
/// iterator thread runs `wake`. On Windows a console control handler does it all: the
/// system runs it on a new thread already.
pub fn on_interrupt(flags: InterruptFlags, wake: fn()) -> std::io::Result<()> {
    imp::on_interrupt(flags, wake)
}

/// SIGINT's number (2 on every system, Windows' C runtime included).
pub const SIGINT: i32 = imp::SIGINT;

/// `text` followed by something that is not Unicode: the byte 0xFF on Unix, a lone
/// surrogate on Windows. For tests of names that are not text.
#[cfg(test)]
pub fn not_unicode(text: &str) -> OsString {
    imp::not_unicode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(windows)]
    #[test]
    fn windows_paths_in_the_form_its_sftp_server_takes() {
        assert_eq!(
            sftp_path(Path::new(r"C:\Users\bob\AppData\Local\relayup\staging")),
            "/C:/Users/bob/AppData/Local/relayup/staging"
        );
        assert_eq!(sftp_path(Path::new(r"\\?\D:\stage")), "/D:/stage");
        let staging = default_staging().unwrap();
        assert!(
            staging.ends_with(r"relayup\staging"),
            "{}",
            staging.display()
        );
    }

    #[cfg(unix)]
    #[test]
    fn unix_paths_are_as_they_are() {
        assert_eq!(
            sftp_path(Path::new("/home/bob/.cache/relayup")),
            "/home/bob/.cache/relayup"
        );
    }
}
