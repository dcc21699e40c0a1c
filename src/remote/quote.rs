//! The one function that puts a path into a remote shell command, and its twin for
//! local file names that may not be UTF-8 (the printed resume command).

/// Quotes `s` as a single POSIX shell word: wrapped in single quotes, with each `'`
/// written as `'\''`. Everything else, newlines and `$` included, is literal inside.
pub fn sh(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Like [`sh`], for a word that may not be UTF-8 (a local file name): valid text is
/// single-quoted as by [`sh`], and each run of other bytes becomes
/// `"$(printf '\ooo')"` (octal escapes, which every POSIX shell's printf knows), so
/// the result is plain text that any POSIX shell turns back into the same bytes.
pub fn sh_os(s: &std::ffi::OsStr) -> String {
    use std::fmt::Write;
    let bytes = crate::platform::shell_bytes(s);
    if bytes.is_empty() {
        return sh("");
    }
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        if !chunk.valid().is_empty() {
            out.push_str(&sh(chunk.valid()));
        }
        if !chunk.invalid().is_empty() {
            out.push_str("\"$(printf '");
            for b in chunk.invalid() {
                let _ = write!(out, "\\{b:03o}");
            }
            out.push_str("')\"");
        }
    }
    out
}

/// Like [`sh`], but a leading `~/` stays outside the quotes as `"$HOME"/` so the remote
/// shell expands it (users write `relayup = "~/bin/relayup"`).
pub fn sh_home(s: &str) -> String {
    match s.strip_prefix("~/") {
        Some(rest) => format!("\"$HOME\"/{}", sh(rest)),
        None => sh(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(unix)]
    use std::process::Command;

    #[test]
    fn quotes_words() {
        assert_eq!(sh("a b"), "'a b'");
        assert_eq!(sh("it's"), "'it'\\''s'");
        assert_eq!(sh(""), "''");
        assert_eq!(sh_home("~/bin/relayup"), "\"$HOME\"/'bin/relayup'");
        assert_eq!(sh_home("/usr/bin/relayup"), "'/usr/bin/relayup'");
        assert_eq!(sh_os(std::ffi::OsStr::new("a b")), "'a b'");
        assert_eq!(sh_os(std::ffi::OsStr::new("")), "''");
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_words_round_trip_through_a_real_shell() {
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(
            sh_os(std::ffi::OsStr::from_bytes(b"caf\xe9.bin")),
            "'caf'\"$(printf '\\351')\"'.bin'"
        );
        let nasty: [&[u8]; 6] = [
            b"caf\xe9.bin",
            b"\xff",
            b"\xfe\xff it's $(x)\n\x80",
            b"/tmp/\xc3\x28/\xe9t\xe9",
            b"plain",
            b"\xc3",
        ];
        for s in nasty {
            let quoted = sh_os(std::ffi::OsStr::from_bytes(s));
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {quoted}"))
                .output()
                .unwrap();
            assert_eq!(out.stdout, s, "round trip of {quoted}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn round_trips_through_a_real_shell() {
        let nasty = [
            "plain",
            "with space",
            "it's",
            "$(touch /tmp/relayup-pwned)",
            "`id`",
            "a;b&&c|d",
            "new\nline",
            "-leading-dash",
            "back\\slash",
            "\"dq\"",
            "*?[glob]",
        ];
        for s in nasty {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", sh(s)))
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                s,
                "round trip of {s:?}"
            );
        }
    }
}
