//! The one function that puts a path into a remote shell command.

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
    use std::process::Command;

    #[test]
    fn quotes_words() {
        assert_eq!(sh("a b"), "'a b'");
        assert_eq!(sh("it's"), "'it'\\''s'");
        assert_eq!(sh(""), "''");
        assert_eq!(sh_home("~/bin/relayup"), "\"$HOME\"/'bin/relayup'");
        assert_eq!(sh_home("/usr/bin/relayup"), "'/usr/bin/relayup'");
    }

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
