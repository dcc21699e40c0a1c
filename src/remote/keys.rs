//! Encrypted private keys: recognise them, and ask for a key's passphrase on the
//! terminal once per run, as `ssh` does. Without a terminal there is nobody to ask:
//! the caller says how to use ssh-agent instead.

use anyhow::{anyhow, Result};
use base64::Engine;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::secret::Secret;

/// Whether the private key file at `path` needs a passphrase: OpenSSH's own format
/// with a cipher other than `none`, or a PEM key marked encrypted.
pub fn is_encrypted(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|text| text_is_encrypted(&text))
}

fn text_is_encrypted(text: &str) -> bool {
    if text.contains("BEGIN ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return true;
    }
    let (begin, end) = (
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "-----END OPENSSH PRIVATE KEY-----",
    );
    let Some(body) = text
        .split_once(begin)
        .and_then(|(_, rest)| rest.split_once(end))
        .map(|(body, _)| body)
    else {
        return false;
    };
    let b64: String = body.split_whitespace().collect();
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64) else {
        return false;
    };
    // "openssh-key-v1\0", then the cipher name as a length-prefixed string.
    const MAGIC: &[u8] = b"openssh-key-v1\0";
    let Some(rest) = bytes.strip_prefix(MAGIC) else {
        return false;
    };
    let Some(len) = rest.get(..4) else {
        return false;
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    rest.get(4..4 + len).is_some_and(|cipher| cipher != b"none")
}

/// Passphrases typed during this run, by key file.
static TYPED: Mutex<Option<HashMap<PathBuf, Secret>>> = Mutex::new(None);

/// The passphrase for `key`: the one typed earlier in this run, unless that is
/// `rejected`; else asked on the terminal (one prompt at a time, however many
/// logins want it). Fails when there is no terminal.
pub fn passphrase(key: &Path, rejected: Option<&Secret>) -> Result<Secret> {
    let mut typed = TYPED.lock().unwrap_or_else(|e| e.into_inner());
    let typed = typed.get_or_insert_with(HashMap::new);
    if let Some(p) = typed.get(key) {
        if Some(p) != rejected {
            return Ok(p.clone());
        }
    }
    if rejected.is_some() {
        eprintln!("relayup: wrong passphrase for {}", key.display());
    }
    let text =
        rpassword::prompt_password(format!("Enter passphrase for key '{}': ", key.display()))
            .map_err(|_| {
                anyhow!(
                    "key {k} is encrypted and there is no terminal to ask for its passphrase; \
             add it to ssh-agent (`ssh-add {k}`) and run relayup again",
                    k = key.display()
                )
            })?;
    let secret = Secret::new(text);
    typed.insert(key.to_path_buf(), secret.clone());
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)] // OpenSSH's ssh-keygen makes the keys; Windows test runs go without
    #[test]
    fn tells_keys_from_ssh_keygen_apart() {
        let dir = tempfile::tempdir().unwrap();
        for (pass, want) in [("", false), ("s3cret words", true)] {
            let key = dir.path().join(format!("k{}", pass.len()));
            let out = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", pass, "-f"])
                .arg(&key)
                .output()
                .expect("ssh-keygen (openssh-client) is installed");
            assert!(out.status.success());
            assert_eq!(is_encrypted(&key), want, "passphrase {pass:?}");
        }
    }

    #[test]
    fn tells_encrypted_keys_apart() {
        assert!(text_is_encrypted(
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n"
        ));
        assert!(text_is_encrypted(
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
        ));
        assert!(!text_is_encrypted(
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"
        ));
        assert!(!text_is_encrypted("garbage"));
        assert!(!text_is_encrypted(
            "-----BEGIN OPENSSH PRIVATE KEY-----\n!!!\n-----END OPENSSH PRIVATE KEY-----\n"
        ));
        assert!(!is_encrypted(Path::new("/nonexistent/key")));
    }
}
