//! The Unix side of [`crate::platform`].

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::fs::{Metadata, OpenOptions};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::InterruptFlags;

pub fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

pub const HOME_UNSET: &str = "HOME is not set; set it or give full paths in the config";

pub fn config_base() -> anyhow::Result<PathBuf> {
    Ok(
        match std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => crate::config::home()?.join(".config"),
        },
    )
}

pub fn state_base() -> anyhow::Result<PathBuf> {
    Ok(
        match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => crate::config::home()?.join(".local").join("state"),
        },
    )
}

pub fn current_user() -> Option<String> {
    if let Some(u) = std::env::var("USER").ok().filter(|u| !u.is_empty()) {
        return Some(u);
    }
    // SAFETY: getpwuid returns a pointer into static storage or NULL; the name is
    // copied out at once, on this thread.
    unsafe {
        let pw = libc::getpwuid(libc::getuid());
        if pw.is_null() || (*pw).pw_name.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_str()
            .ok()
            .map(str::to_string)
    }
}

pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    ok.then(|| String::from_utf8_lossy(&buf[..end]).to_string())
}

pub fn machine_id() -> Option<String> {
    std::fs::read_to_string("/etc/machine-id").ok()
}

pub fn may_be_running(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    // Signal 0 checks existence only; EPERM means it exists under another user.
    // SAFETY: kill with signal 0 sends nothing.
    let delivered = unsafe { libc::kill(pid, 0) } == 0;
    delivered || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

pub fn is_private_file(meta: &Metadata) -> bool {
    meta.permissions().mode() & 0o077 == 0
}

pub fn private_dir_problem(meta: &Metadata) -> Option<String> {
    // SAFETY: getuid cannot fail and touches no memory.
    let me = unsafe { libc::getuid() };
    (meta.uid() != me || meta.mode() & 0o022 != 0).then(|| {
        format!(
            "belongs to uid {} with mode {:o}",
            meta.uid(),
            meta.mode() & 0o7777
        )
    })
}

pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().mode(0o700).create(path)
}

pub fn owner_only(opts: &mut OpenOptions) -> &mut OpenOptions {
    opts.mode(0o600)
}

pub fn free_space(dir: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct it is given, from a NUL-ended path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

pub fn os_str_bytes(s: &OsStr) -> Cow<'_, [u8]> {
    Cow::Borrowed(s.as_bytes())
}

pub fn os_string_from_bytes(bytes: Vec<u8>) -> Option<OsString> {
    Some(OsString::from_vec(bytes))
}

pub fn shell_bytes(s: &OsStr) -> Cow<'_, [u8]> {
    Cow::Borrowed(s.as_bytes())
}

pub fn no_core_dumps() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_DUMPABLE takes plain integers and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

pub const SIGINT: i32 = signal_hook::consts::SIGINT;

pub fn on_interrupt(flags: InterruptFlags, wake: fn()) -> std::io::Result<()> {
    use signal_hook::consts::SIGTERM;
    use signal_hook::flag;
    for sig in [SIGINT, SIGTERM] {
        // signal-hook runs a signal's actions in the order they were registered: the
        // exit must come before the action that arms it, or the first signal would exit.
        flag::register_conditional_shutdown(sig, 128 + sig, flags.armed)?;
        flag::register(sig, flags.armed)?;
        flag::register_usize(sig, flags.signal, sig as usize)?;
        flag::register(sig, flags.interrupted)?;
    }
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::spawn(move || {
        for _ in signals.forever() {
            wake();
        }
    });
    Ok(())
}

#[cfg(test)]
pub fn not_unicode(text: &str) -> OsString {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0xff);
    OsString::from_vec(bytes)
}

pub fn default_staging() -> anyhow::Result<PathBuf> {
    crate::config::expand(crate::server::names::DEFAULT_STAGING)
}

pub fn sftp_path(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_bits_decide_privacy() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "x").unwrap();
        for (mode, private) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false)] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let meta = std::fs::metadata(&f).unwrap();
            assert_eq!(is_private_file(&meta), private, "{mode:o}");
        }
        let d = dir.path().join("staging");
        create_private_dir(&d).unwrap();
        let meta = std::fs::metadata(&d).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o700);
        assert_eq!(private_dir_problem(&meta), None);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let meta = std::fs::metadata(&d).unwrap();
        let problem = private_dir_problem(&meta).unwrap();
        assert!(problem.ends_with("with mode 777"), "{problem}");
    }
}
