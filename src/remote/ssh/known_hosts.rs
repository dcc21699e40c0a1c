//! known_hosts files read the way OpenSSH reads them, so relayup trusts exactly the keys
//! `ssh` trusts: host names that are plain, hashed (`|1|salt|hash`, as Debian and Ubuntu
//! write them), comma-separated lists, `*`/`?` wildcards and `!` negations, in several
//! files at once (the user's and the system's). libssh2's own reader knows no patterns
//! or markers and gives up on a file at the first line it cannot parse; relayup needs
//! one reading for both decisions: which key type to ask the server for, and whether
//! the key it sent is known.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use std::path::{Path, PathBuf};

/// One known key for the host looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// As written in the file: `ssh-ed25519`, `ssh-rsa`, `ecdsa-sha2-nistp256`, ...
    pub key_type: String,
    /// The public key blob (the base64 field, decoded).
    pub key: Vec<u8>,
    /// `@revoked`: this key must never be accepted for the host.
    pub revoked: bool,
    /// Where it was read, for messages.
    pub file: PathBuf,
    pub line: usize,
}

impl Entry {
    /// `file:line`, as OpenSSH names an offending key.
    pub fn place(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

/// The name a host's keys are filed under without a HostKeyAlias: `host` on port 22,
/// else `[host]:port` (OpenSSH's rule).
pub fn host_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// Every key line in `files` whose host field names `name`, in file order. A missing
/// or unreadable file holds no keys, and a line that does not parse is skipped, as
/// OpenSSH does: one odd line must not hide the others.
pub fn entries_for(files: &[PathBuf], name: &str) -> Vec<Entry> {
    let name = name.to_ascii_lowercase();
    let mut found = Vec::new();
    for file in files {
        let Ok(bytes) = std::fs::read(file) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        for (i, line) in text.lines().enumerate() {
            if let Some(entry) = parse_line(line, &name, file, i + 1) {
                found.push(entry);
            }
        }
    }
    found
}

fn parse_line(line: &str, name: &str, file: &Path, number: usize) -> Option<Entry> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut fields = line.split_whitespace().peekable();
    let revoked = match fields.peek() {
        Some(&"@revoked") => {
            fields.next();
            true
        }
        // `@cert-authority` keys sign host certificates, which relayup (libssh2) does
        // not use; an unknown marker is skipped, as OpenSSH does.
        Some(m) if m.starts_with('@') => return None,
        _ => false,
    };
    let (hosts, key_type, blob) = (fields.next()?, fields.next()?, fields.next()?);
    if !names_host(hosts, name) {
        return None;
    }
    let key = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .ok()?;
    Some(Entry {
        key_type: key_type.to_string(),
        key,
        revoked,
        file: file.to_path_buf(),
        line: number,
    })
}

/// Whether the host field of a known_hosts line names `name` (lower case). A hashed
/// field names one host; otherwise it is a comma-separated pattern list in which a
/// matching `!pattern` excludes the host whatever else matches.
pub fn names_host(field: &str, name: &str) -> bool {
    if let Some(hashed) = field.strip_prefix("|1|") {
        return hashed_names(hashed, name);
    }
    let mut positive = false;
    for pattern in field.split(',') {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        if wildcard_match(pattern.to_ascii_lowercase().as_bytes(), name.as_bytes()) {
            if negated {
                return false;
            }
            positive = true;
        }
    }
    positive
}

/// `salt|hash`, both base64: the host field written by `ssh-keygen -H` or
/// `HashKnownHosts yes`, where hash = HMAC-SHA1(key = salt, message = name).
fn hashed_names(salt_and_hash: &str, name: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some((salt, hash)) = salt_and_hash.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(name.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

/// OpenSSH's host patterns: `*` is any run of characters, `?` any one character;
/// everything else, `[` and `]` included, stands for itself.
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| wildcard_match(rest, &text[skip..])),
        Some((&p, rest)) => match text.split_first() {
            Some((&t, text_rest)) if p == b'?' || p == t => wildcard_match(rest, text_rest),
            _ => false,
        },
    }
}

/// What the known keys say about the key a server sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// The very key is known for the host.
    Known,
    /// The key is listed as `@revoked` for the host.
    Revoked(&'a Entry),
    /// A different key of the same type is known: the host key changed.
    Changed(&'a Entry),
    /// Only keys of other types are known: not a change, but not this key either.
    OtherTypes(Vec<String>),
    /// Nothing is known for the host.
    Unknown,
}

/// Judges the key `key` of type `key_type` the server sent against `entries` (those
/// for its name). Only a known key of the same type can make a key "changed": a host
/// has one key per type, and offering another type is not a change.
pub fn verdict<'a>(entries: &'a [Entry], key_type: &str, key: &[u8]) -> Verdict<'a> {
    if let Some(e) = entries.iter().find(|e| e.revoked && e.key == key) {
        return Verdict::Revoked(e);
    }
    let valid = || entries.iter().filter(|e| !e.revoked);
    if valid().any(|e| e.key == key) {
        return Verdict::Known;
    }
    if let Some(e) = valid().find(|e| e.key_type == key_type) {
        return Verdict::Changed(e);
    }
    let types = key_types(entries);
    if types.is_empty() {
        Verdict::Unknown
    } else {
        Verdict::OtherTypes(types)
    }
}

/// The key types known for the host, first seen first, revoked keys left out: the
/// host-key algorithms to ask the server for.
pub fn key_types(entries: &[Entry]) -> Vec<String> {
    let mut types: Vec<String> = Vec::new();
    for e in entries.iter().filter(|e| !e.revoked) {
        if !types.contains(&e.key_type) {
            types.push(e.key_type.clone());
        }
    }
    types
}

#[cfg(test)]
mod tests {
    use super::*;

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    /// A hashed host field for `name` with `salt`, computed independently of
    /// [`hashed_names`] through the same documented recipe.
    fn hashed(name: &str, salt: &[u8]) -> String {
        let mut mac = Hmac::<Sha1>::new_from_slice(salt).unwrap();
        mac.update(name.as_bytes());
        format!(
            "|1|{}|{}",
            B64.encode(salt),
            B64.encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn hashed_name_matches_a_published_hmac_sha1_vector() {
        // RFC 2202 test case 2: HMAC-SHA1(key "Jefe", "what do ya want for nothing?").
        let digest = [
            0xef, 0xfc, 0xdf, 0x6a, 0xe5, 0xeb, 0x2f, 0xa2, 0xd2, 0x74, 0x16, 0xd5, 0xf1, 0x84,
            0xdf, 0x9c, 0x25, 0x9a, 0x7c, 0x79,
        ];
        let field = format!("|1|{}|{}", B64.encode(b"Jefe"), B64.encode(digest));
        assert!(names_host(&field, "what do ya want for nothing?"));
        assert!(!names_host(&field, "what do ya want for nothing"));
    }

    #[cfg(unix)] // OpenSSH's ssh-keygen makes the keys; Windows test runs go without
    #[test]
    fn hashed_name_from_ssh_keygen_matches_host_and_port_form() {
        let dir = tempfile::tempdir().unwrap();
        let public_key = |kind: &str| {
            let path = dir.path().join(kind);
            let out = std::process::Command::new("ssh-keygen")
                .args(["-q", "-N", "", "-t", kind, "-f"])
                .arg(&path)
                .output()
                .expect("ssh-keygen is installed");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = std::fs::read_to_string(path.with_extension("pub")).unwrap();
            text.split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        };
        let file = dir.path().join("known_hosts");
        std::fs::write(
            &file,
            format!(
                "[127.0.0.1]:2222 {}\nalpha.example {}\n",
                public_key("ecdsa"),
                public_key("ed25519")
            ),
        )
        .unwrap();
        let out = std::process::Command::new("ssh-keygen")
            .arg("-H")
            .arg("-f")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.lines().all(|l| l.starts_with("|1|")), "{text}");

        let files = [file];
        let ecdsa = entries_for(&files, "[127.0.0.1]:2222");
        assert_eq!(key_types(&ecdsa), ["ecdsa-sha2-nistp256"]);
        assert_eq!(ecdsa[0].line, 1);
        assert_eq!(
            key_types(&entries_for(&files, "ALPHA.example")),
            ["ssh-ed25519"]
        );
        assert!(
            entries_for(&files, "127.0.0.1").is_empty(),
            "the port is part of the name"
        );
        assert!(entries_for(&files, "[127.0.0.1]:22").is_empty());
        assert!(entries_for(&files, "alpha").is_empty());
    }

    #[test]
    fn hashed_name_with_a_bad_field_names_nothing() {
        let good = hashed("alpha", b"0123456789abcdefghij");
        assert!(names_host(&good, "alpha"));
        assert!(!names_host(&good, "beta"));
        for bad in ["|1|", "|1|%%%|abc", "|1|c2FsdA==", "|2|c2FsdA==|c2FsdA=="] {
            assert!(!names_host(bad, "alpha"), "{bad}");
        }
    }

    #[test]
    fn pattern_lists_wildcards_and_negation() {
        assert!(names_host("beta,alpha", "alpha"));
        assert!(names_host("*.example.com", "a.example.com"));
        assert!(!names_host("*.example.com", "example.com"));
        assert!(names_host("host?", "host7"));
        assert!(names_host("[10.0.0.*]:2222", "[10.0.0.5]:2222"));
        assert!(!names_host("[10.0.0.*]:2222", "10.0.0.5"));
        assert!(names_host("Alpha", "alpha"), "patterns ignore case");
        // A negated name excludes the host even when a later pattern matches it.
        assert!(!names_host("!alpha,*", "alpha"));
        assert!(!names_host("*,!alpha", "alpha"));
        assert!(names_host("*,!alpha", "beta"));
        assert!(
            !names_host("!alpha", "beta"),
            "a negation alone matches nothing"
        );
    }

    #[test]
    fn lines_markers_and_several_files() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user");
        let global = dir.path().join("global");
        std::fs::write(
            &user,
            "# comment\n\nalpha ssh-ed25519 AAAA\nnot a key line\nalpha ssh-rsa !!notbase64\n\
             @cert-authority * ssh-rsa BBBB\n@revoked alpha ssh-ed25519 CCCC\n",
        )
        .unwrap();
        std::fs::write(&global, "beta,alpha ecdsa-sha2-nistp256 DDDD\n").unwrap();
        let files = [user.clone(), dir.path().join("missing"), global.clone()];
        let found = entries_for(&files, "alpha");
        let summary: Vec<(&str, bool, String)> = found
            .iter()
            .map(|e| (e.key_type.as_str(), e.revoked, e.place()))
            .collect();
        assert_eq!(
            summary,
            [
                ("ssh-ed25519", false, format!("{}:3", user.display())),
                ("ssh-ed25519", true, format!("{}:7", user.display())),
                (
                    "ecdsa-sha2-nistp256",
                    false,
                    format!("{}:1", global.display())
                ),
            ]
        );
        assert_eq!(key_types(&found), ["ssh-ed25519", "ecdsa-sha2-nistp256"]);
    }

    fn entry(key_type: &str, key: &[u8], revoked: bool) -> Entry {
        Entry {
            key_type: key_type.into(),
            key: key.to_vec(),
            revoked,
            file: PathBuf::from("kh"),
            line: 1,
        }
    }

    #[test]
    fn another_key_type_is_not_a_changed_key() {
        let known = [entry("ssh-rsa", b"rsa-1", false)];
        assert_eq!(verdict(&known, "ssh-rsa", b"rsa-1"), Verdict::Known);
        assert_eq!(
            verdict(&known, "ssh-rsa", b"rsa-2"),
            Verdict::Changed(&known[0])
        );
        assert_eq!(
            verdict(&known, "ssh-ed25519", b"ed-1"),
            Verdict::OtherTypes(vec!["ssh-rsa".into()])
        );
        assert_eq!(verdict(&[], "ssh-ed25519", b"ed-1"), Verdict::Unknown);
    }

    #[test]
    fn revoked_key_is_refused_even_when_also_listed() {
        let known = [
            entry("ssh-ed25519", b"ed-1", false),
            entry("ssh-ed25519", b"ed-1", true),
            entry("ssh-ed25519", b"ed-2", true),
        ];
        assert_eq!(
            verdict(&known, "ssh-ed25519", b"ed-1"),
            Verdict::Revoked(&known[1])
        );
        assert_eq!(
            verdict(&known[2..], "ssh-ed25519", b"ed-3"),
            Verdict::Unknown
        );
        assert!(key_types(&known[2..]).is_empty());
    }
}
