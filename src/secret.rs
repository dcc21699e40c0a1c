//! A password that cannot be printed by accident: `Debug` and `Display` show
//! `(redacted)`. The only way to the text is [`Secret::expose`]. Its memory is
//! overwritten with zeros when it is dropped (zeroize, which the optimizer cannot
//! remove), and a process that holds one for long can turn core dumps off.

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one call that needs it (a login).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Secret {
    /// Overwrites the whole allocation with zeros, spare capacity included.
    fn wipe(&mut self) {
        self.0.zeroize();
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.wipe();
    }
}

/// No core dump of this process, and no ptrace or /proc reading of its memory by its
/// own user (Linux: `PR_SET_DUMPABLE` 0): for a relay, which holds the server password
/// for the whole send on a colleague's machine.
pub fn no_core_dumps() {
    crate::platform::no_core_dumps()
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(redacted)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(redacted)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "(redacted) (redacted)");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some((redacted))");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn wiped_to_zeros() {
        let mut s = Secret::new(String::with_capacity(32) + "hunter2");
        let (ptr, cap) = (s.0.as_ptr(), s.0.capacity());
        s.wipe();
        // SAFETY: wiping keeps the allocation (it is freed with `s`, below) and writes
        // every byte of it, so all `cap` bytes are initialized.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, cap) };
        assert!(bytes.iter().all(|&b| b == 0), "{bytes:?}");
        assert_eq!(s.expose(), "");
    }
}
