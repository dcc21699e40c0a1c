//! The Windows side of [`crate::platform`]. File and directory privacy is left to the
//! ACLs that Windows gives a new file under the user's profile: nothing here reads or
//! sets an ACL yet.

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::fs::{Metadata, OpenOptions};
use std::os::windows::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use windows_sys::core::BOOL;
use windows_sys::Win32::Foundation::{
    CloseHandle, GetLastError, ERROR_ACCESS_DENIED, ERROR_SUCCESS, STILL_ACTIVE,
};
use windows_sys::Win32::Storage::FileSystem::GetDiskFreeSpaceExW;
use windows_sys::Win32::System::Console::{
    SetConsoleCtrlHandler, CTRL_BREAK_EVENT, CTRL_CLOSE_EVENT, CTRL_C_EVENT, CTRL_LOGOFF_EVENT,
    CTRL_SHUTDOWN_EVENT,
};
use windows_sys::Win32::System::Registry::{
    RegGetValueW, HKEY_LOCAL_MACHINE, RRF_RT_REG_SZ, RRF_SUBKEY_WOW6464KEY,
};
use windows_sys::Win32::System::SystemInformation::{ComputerNameDnsHostname, GetComputerNameExW};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, GetExitCodeProcess, OpenProcess, TerminateProcess,
    PROCESS_QUERY_LIMITED_INFORMATION,
};

use super::InterruptFlags;

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

pub fn home_dir() -> Option<PathBuf> {
    env_dir("HOME").or_else(|| env_dir("USERPROFILE"))
}

pub const HOME_UNSET: &str =
    "neither HOME nor USERPROFILE is set; set one or give full paths in the config";

pub fn config_base() -> anyhow::Result<PathBuf> {
    match env_dir("APPDATA") {
        Some(p) => Ok(p),
        None => Ok(crate::config::home()?.join("AppData").join("Roaming")),
    }
}

pub fn state_base() -> anyhow::Result<PathBuf> {
    match env_dir("LOCALAPPDATA") {
        Some(p) => Ok(p),
        None => Ok(crate::config::home()?.join("AppData").join("Local")),
    }
}

pub fn default_staging() -> anyhow::Result<PathBuf> {
    Ok(state_base()?.join("relayup").join("staging"))
}

pub fn sftp_path(path: &Path) -> String {
    let text = path.display().to_string();
    let text = text
        .strip_prefix(r"\\?\")
        .unwrap_or(&text)
        .replace('\\', "/");
    // A drive path: OpenSSH for Windows names it /C:/…
    if text.as_bytes().get(1) == Some(&b':') {
        format!("/{text}")
    } else {
        text
    }
}

pub fn current_user() -> Option<String> {
    std::env::var("USERNAME").ok().filter(|u| !u.is_empty())
}

/// A NUL-ended UTF-16 copy of `s`, as the `W` functions take.
fn wide(s: &OsStr) -> Vec<u16> {
    s.encode_wide().chain(Some(0)).collect()
}

pub fn hostname() -> Option<String> {
    let mut buf = [0u16; 256];
    let mut len = buf.len() as u32;
    // SAFETY: the buffer holds `len` UTF-16 units; on success `len` is the number
    // written, without the NUL.
    let ok = unsafe { GetComputerNameExW(ComputerNameDnsHostname, buf.as_mut_ptr(), &mut len) };
    (ok != 0).then(|| String::from_utf16_lossy(&buf[..(len as usize).min(buf.len())]))
}

pub fn machine_id() -> Option<String> {
    let key = wide(OsStr::new(r"SOFTWARE\Microsoft\Cryptography"));
    let value = wide(OsStr::new("MachineGuid"));
    let mut buf = [0u16; 128];
    let mut bytes = std::mem::size_of_val(&buf) as u32;
    // SAFETY: both names are NUL-ended; the buffer holds `bytes` bytes, and on success
    // `bytes` is the size written, NUL included. The 64-bit view is read whatever
    // this build's width, so every build of this machine sees the same id.
    let status = unsafe {
        RegGetValueW(
            HKEY_LOCAL_MACHINE,
            key.as_ptr(),
            value.as_ptr(),
            RRF_RT_REG_SZ | RRF_SUBKEY_WOW6464KEY,
            std::ptr::null_mut(),
            buf.as_mut_ptr().cast(),
            &mut bytes,
        )
    };
    if status != ERROR_SUCCESS {
        return None;
    }
    let units = (bytes as usize / 2).min(buf.len());
    let text = String::from_utf16_lossy(&buf[..units]);
    Some(text.trim_end_matches('\0').to_string())
}

pub fn may_be_running(pid: u32) -> bool {
    // SAFETY: OpenProcess returns a handle of our own or NULL; the handle is closed
    // before returning.
    unsafe {
        let handle = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
        if handle.is_null() {
            // No such process, unless it is one this account may not look at.
            return GetLastError() == ERROR_ACCESS_DENIED;
        }
        let mut code = 0u32;
        let asked = GetExitCodeProcess(handle, &mut code) != 0;
        CloseHandle(handle);
        // A process that ended with code 259 itself reads as running: the safe side.
        !asked || code == STILL_ACTIVE as u32
    }
}

pub fn is_private_file(_meta: &Metadata) -> bool {
    true
}

pub fn private_dir_problem(_meta: &Metadata) -> Option<String> {
    None
}

/// The staging dir's access list for the user whose SID is `sid`: protected
/// (nothing inherited from the parent), full access for that user and the system
/// (`SY`), inherited by every file and directory made in it (`OICI`). Other users of
/// the machine cannot read what is staged there.
fn private_dir_sddl(sid: &str) -> String {
    format!("D:P(A;OICI;FA;;;{sid})(A;OICI;FA;;;SY)")
}

/// The NUL-ended UTF-16 string `text`, which the system allocated with `LocalAlloc`,
/// as a `String`; frees it.
///
/// # Safety
/// `text` is a NUL-ended string from `LocalAlloc`, not used after this.
unsafe fn take_local_wide(text: *mut u16) -> String {
    let n = (0..).take_while(|&i| unsafe { *text.add(i) } != 0).count();
    let s = String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(text, n) });
    unsafe { windows_sys::Win32::Foundation::LocalFree(text as _) };
    s
}

/// This process's user's SID in string form (`S-1-5-21-…`).
fn current_user_sid() -> std::io::Result<String> {
    use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
    use windows_sys::Win32::Security::Authorization::ConvertSidToStringSidW;
    use windows_sys::Win32::Security::{GetTokenInformation, TokenUser, TOKEN_QUERY, TOKEN_USER};
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: the token handle is closed here; the buffer (u64s, so aligned for
    // TOKEN_USER) holds the TOKEN_USER and the SID after it, as the call checks;
    // the string is LocalAlloc'ed and freed here.
    unsafe {
        if OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) == 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = vec![0u64; 64];
        let mut len = 0u32;
        let ok = GetTokenInformation(
            token,
            TokenUser,
            buf.as_mut_ptr().cast(),
            (buf.len() * 8) as u32,
            &mut len,
        );
        let err = std::io::Error::last_os_error();
        CloseHandle(token);
        if ok == 0 {
            return Err(err);
        }
        let user = &*(buf.as_ptr() as *const TOKEN_USER);
        let mut text: *mut u16 = std::ptr::null_mut();
        if ConvertSidToStringSidW(user.User.Sid, &mut text) == 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(take_local_wide(text))
    }
}

pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use windows_sys::Win32::Foundation::LocalFree;
    use windows_sys::Win32::Security::Authorization::{
        ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
    };
    use windows_sys::Win32::Security::{PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES};
    use windows_sys::Win32::Storage::FileSystem::CreateDirectoryW;
    let sddl = wide(OsStr::new(&private_dir_sddl(&current_user_sid()?)));
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: the string is NUL-ended; `sd` receives a LocalAlloc'ed descriptor.
    let made = unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            sddl.as_ptr(),
            SDDL_REVISION_1,
            &mut sd,
            std::ptr::null_mut(),
        )
    };
    if made == 0 {
        return Err(std::io::Error::last_os_error());
    }
    let attrs = SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: sd,
        bInheritHandle: 0,
    };
    let name = wide(path.as_os_str());
    // SAFETY: the path is NUL-ended and `attrs` points at a valid descriptor, freed
    // once the directory is made.
    let ok = unsafe { CreateDirectoryW(name.as_ptr(), &attrs) };
    let err = std::io::Error::last_os_error();
    unsafe { LocalFree(sd as _) };
    if ok == 0 {
        return Err(err);
    }
    Ok(())
}

pub fn owner_only(opts: &mut OpenOptions) -> &mut OpenOptions {
    opts
}

pub fn free_space(dir: &Path) -> Option<u64> {
    let path = wide(dir.as_os_str());
    let mut free = 0u64;
    // SAFETY: the path is NUL-ended; the totals not asked for are NULL.
    let ok = unsafe {
        GetDiskFreeSpaceExW(
            path.as_ptr(),
            &mut free,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    (ok != 0).then_some(free)
}

pub fn os_str_bytes(s: &OsStr) -> Cow<'_, [u8]> {
    Cow::Owned(s.encode_wide().flat_map(u16::to_le_bytes).collect())
}

pub fn os_string_from_bytes(bytes: Vec<u8>) -> Option<OsString> {
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|p| u16::from_le_bytes([p[0], p[1]]))
        .collect();
    Some(OsString::from_wide(&units))
}

pub fn shell_bytes(s: &OsStr) -> Cow<'_, [u8]> {
    match s.to_str() {
        Some(text) => Cow::Borrowed(text.as_bytes()),
        None => Cow::Owned(s.to_string_lossy().into_owned().into_bytes()),
    }
}

pub fn no_core_dumps() {}

/// The C runtime's numbers, as the exit code 128 + N reports them.
pub const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;
const SIGBREAK: i32 = 21;

static INTERRUPT: OnceLock<(InterruptFlags, fn())> = OnceLock::new();

pub fn on_interrupt(flags: InterruptFlags, wake: fn()) -> std::io::Result<()> {
    if INTERRUPT.set((flags, wake)).is_err() {
        return Err(std::io::Error::other("interrupts are handled already"));
    }
    // SAFETY: the handler is a plain function that lives as long as the process.
    if unsafe { SetConsoleCtrlHandler(Some(console_event), 1) } == 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The console control handler. Windows calls it on a thread of its own, so it does
/// all the work itself. Returning 1 tells Windows the event is handled: for Ctrl-C and
/// Ctrl-Break the process goes on; for a closed console Windows ends it on return.
unsafe extern "system" fn console_event(kind: u32) -> BOOL {
    let sig = match kind {
        CTRL_C_EVENT => SIGINT,
        CTRL_BREAK_EVENT => SIGBREAK,
        CTRL_CLOSE_EVENT | CTRL_LOGOFF_EVENT | CTRL_SHUTDOWN_EVENT => SIGTERM,
        _ => return 0,
    };
    match INTERRUPT.get() {
        Some((flags, wake)) => {
            interrupt(flags, *wake, sig);
            1
        }
        None => 0,
    }
}

fn interrupt(flags: &InterruptFlags, wake: fn(), sig: i32) {
    if flags.armed.load(Ordering::SeqCst) {
        // At once, as `_exit` on Unix: no destructor or lock can hold it.
        // SAFETY: ends this very process.
        unsafe { TerminateProcess(GetCurrentProcess(), 128 + sig as u32) };
    }
    flags.armed.store(true, Ordering::SeqCst);
    flags.signal.store(sig as usize, Ordering::SeqCst);
    flags.interrupted.store(true, Ordering::SeqCst);
    wake();
}

#[cfg(test)]
pub fn not_unicode(text: &str) -> OsString {
    let mut units: Vec<u16> = text.encode_utf16().collect();
    units.push(0xd800);
    OsString::from_wide(&units)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The DACL of the descriptor `sd` in SDDL; frees `sd`.
    ///
    /// # Safety
    /// `sd` is a security descriptor from `LocalAlloc`, not used after this.
    unsafe fn dacl_sddl(sd: windows_sys::Win32::Security::PSECURITY_DESCRIPTOR) -> String {
        use windows_sys::Win32::Foundation::LocalFree;
        use windows_sys::Win32::Security::Authorization::{
            ConvertSecurityDescriptorToStringSecurityDescriptorW, SDDL_REVISION_1,
        };
        use windows_sys::Win32::Security::DACL_SECURITY_INFORMATION;
        let mut text: *mut u16 = std::ptr::null_mut();
        // SAFETY: as the caller promises; the string is LocalAlloc'ed and freed here.
        unsafe {
            let ok = ConvertSecurityDescriptorToStringSecurityDescriptorW(
                sd,
                SDDL_REVISION_1,
                DACL_SECURITY_INFORMATION,
                &mut text,
                std::ptr::null_mut(),
            );
            assert!(
                ok != 0,
                "ConvertSecurityDescriptorToStringSecurityDescriptorW"
            );
            LocalFree(sd as _);
            take_local_wide(text)
        }
    }

    /// `sddl` read into a security descriptor and written back as SDDL, as Windows
    /// understands it.
    fn round_trip(sddl: &str) -> String {
        use windows_sys::Win32::Security::Authorization::{
            ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
        };
        use windows_sys::Win32::Security::PSECURITY_DESCRIPTOR;
        let text = wide(OsStr::new(sddl));
        let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: NUL-ended input; the descriptor is LocalAlloc'ed and freed by
        // `dacl_sddl`.
        unsafe {
            let ok = ConvertStringSecurityDescriptorToSecurityDescriptorW(
                text.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                std::ptr::null_mut(),
            );
            assert!(ok != 0, "{sddl} does not parse");
            dacl_sddl(sd)
        }
    }

    /// The access list a staging dir is made with. (Wine keeps only part of a DACL
    /// on its files: on disk, only that no one else is let in is checked.)
    #[test]
    fn a_private_dir_lets_in_its_owner_and_the_system_only() {
        let sid = current_user_sid().unwrap();
        assert!(sid.starts_with("S-1-"), "{sid}");
        let dacl = round_trip(&private_dir_sddl(&sid));
        assert!(
            dacl.starts_with("D:P"),
            "protected from inheritance: {dacl}"
        );
        assert_eq!(dacl.matches("(A;").count(), 2, "{dacl}");
        assert!(
            dacl.contains(&format!(";{sid})")) && dacl.contains(";SY)"),
            "{dacl}"
        );
        let d = tempfile::tempdir().unwrap();
        let stage = d.path().join("staging");
        create_private_dir(&stage).unwrap();
        assert!(stage.is_dir());
        assert!(create_private_dir(&stage).is_err(), "made only once");
        // On disk no one else is let in (a directory made plainly lets Everyone
        // read, under Wine as on Windows).
        let on_disk = dacl_of(&stage);
        for others in [";WD)", ";BU)", ";AU)"] {
            assert!(!on_disk.contains(others), "{on_disk}");
        }
    }

    /// The DACL of `path` in SDDL.
    fn dacl_of(path: &Path) -> String {
        use windows_sys::Win32::Security::Authorization::{GetNamedSecurityInfoW, SE_FILE_OBJECT};
        use windows_sys::Win32::Security::{DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR};
        let name = wide(path.as_os_str());
        let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: NUL-ended path; the descriptor is LocalAlloc'ed and freed by
        // `dacl_sddl`.
        unsafe {
            let e = GetNamedSecurityInfoW(
                name.as_ptr(),
                SE_FILE_OBJECT,
                DACL_SECURITY_INFORMATION,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut sd,
            );
            assert_eq!(e, 0, "GetNamedSecurityInfoW");
            dacl_sddl(sd)
        }
    }

    #[test]
    fn names_round_trip_through_bytes_even_with_a_lone_surrogate() {
        let odd = OsString::from_wide(&[0x63, 0x61, 0x66, 0xe9, 0xd800, 0x2e, 0x62]);
        let bytes = os_str_bytes(&odd).into_owned();
        assert_eq!(os_string_from_bytes(bytes), Some(odd.clone()));
        assert_eq!(os_string_from_bytes(vec![1, 2, 3]), None);
        assert_eq!(&*shell_bytes(OsStr::new("café")), "café".as_bytes());
        assert_eq!(&*shell_bytes(&odd), "café\u{fffd}.b".as_bytes());
    }

    #[test]
    fn this_machine_answers() {
        assert!(hostname().is_some_and(|h| !h.is_empty()));
        // A GUID in its usual spelling, as Windows (and Wine) set it up.
        assert!(
            machine_id().is_some_and(|id| id.len() == 36),
            "{:?}",
            machine_id()
        );
        assert!(may_be_running(std::process::id()));
        let here = std::env::current_dir().unwrap();
        assert!(free_space(&here).is_some_and(|n| n > 0));
    }

    #[test]
    fn an_interrupt_sets_the_flags_and_wakes() {
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        static ARMED: AtomicBool = AtomicBool::new(false);
        static SIGNAL: AtomicUsize = AtomicUsize::new(0);
        static INTERRUPTED: AtomicBool = AtomicBool::new(false);
        static WAKES: AtomicUsize = AtomicUsize::new(0);
        let flags = InterruptFlags {
            armed: &ARMED,
            signal: &SIGNAL,
            interrupted: &INTERRUPTED,
        };
        interrupt(
            &flags,
            || {
                WAKES.fetch_add(1, Ordering::SeqCst);
            },
            SIGBREAK,
        );
        assert!(ARMED.load(Ordering::SeqCst) && INTERRUPTED.load(Ordering::SeqCst));
        assert_eq!(SIGNAL.load(Ordering::SeqCst), 21);
        assert_eq!(WAKES.load(Ordering::SeqCst), 1);
    }
}
