//! What the server offers beyond plain uploads, asked once per login: writing at an
//! offset, and hashing a file on the server (FTP `FEAT`; SFTP what libssh2 lets us
//! know). Writes straight into one file and verification without a shell login
//! depend on these.

use serde::Serialize;

/// The server's offers, as far as they can be known.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Offers {
    /// An upload may start at an offset of an existing file: FTP `REST STREAM`; with
    /// SFTP always (a write names its offset).
    pub rest: bool,
    /// FTP `HASH` algorithms (`MD5`, `SHA-1`, …), as the server names them.
    pub hash: Vec<String>,
    /// FTP `RANG STREAM`: `HASH` (and transfers) over a byte range.
    pub rang: bool,
    /// FTP `XMD5 <path> [start end]`.
    pub xmd5: bool,
    /// FTP `XCRC <path> [start end]`.
    pub xcrc: bool,
    /// FTP `XSHA1`.
    pub xsha1: bool,
    /// SFTP extensions the server announced; `None` when they cannot be listed: FTP,
    /// and SFTP through libssh2, which does not hand the server's list out.
    pub sftp_extensions: Option<Vec<String>>,
}

impl Offers {
    /// Reads the features of a `FEAT` reply (name → parameters, as suppaftp's `feat()`
    /// returns them). Names are matched without regard to case (RFC 2389).
    pub fn from_feat<'a>(
        features: impl IntoIterator<Item = (&'a String, &'a Option<String>)>,
    ) -> Offers {
        let mut offers = Offers::default();
        for (name, params) in features {
            let params = params.as_deref().unwrap_or("").trim();
            match name.to_ascii_uppercase().as_str() {
                "REST" => offers.rest = params.eq_ignore_ascii_case("STREAM"),
                "RANG" => offers.rang = params.eq_ignore_ascii_case("STREAM"),
                // `HASH SHA-1*;MD5;…`: the `*` marks the algorithm now selected.
                "HASH" => {
                    offers.hash = params
                        .split(';')
                        .map(|a| a.trim().trim_end_matches('*').to_string())
                        .filter(|a| !a.is_empty())
                        .collect()
                }
                "XMD5" => offers.xmd5 = true,
                "XCRC" => offers.xcrc = true,
                "XSHA1" => offers.xsha1 = true,
                _ => {}
            }
        }
        offers
    }

    /// What an SFTP server is known to offer: writes at any offset (SFTP v3 itself).
    /// Its extensions (`posix-rename@openssh.com`, …) are unknown: libssh2 keeps them.
    pub fn sftp() -> Offers {
        Offers {
            rest: true,
            ..Offers::default()
        }
    }

    /// A short line for the `peers check` table: `REST HASH(MD5,SHA-1) XMD5`, or `-`.
    pub fn summary(&self) -> String {
        let mut words = Vec::new();
        if self.rest {
            words.push("REST".to_string());
        }
        if !self.hash.is_empty() {
            words.push(format!("HASH({})", self.hash.join(",")));
        }
        for (on, word) in [
            (self.rang, "RANG"),
            (self.xmd5, "XMD5"),
            (self.xcrc, "XCRC"),
            (self.xsha1, "XSHA1"),
        ] {
            if on {
                words.push(word.to_string());
            }
        }
        if let Some(ext) = &self.sftp_extensions {
            words.extend(ext.iter().cloned());
        }
        if words.is_empty() {
            "-".into()
        } else {
            words.join(" ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The feature lines of a `FEAT` reply as suppaftp hands them over: the first word
    /// of each indented line, then the rest.
    fn features(reply: &str) -> HashMap<String, Option<String>> {
        reply
            .lines()
            .filter(|l| l.starts_with(' '))
            .map(|l| {
                let l = l.trim();
                match l.split_once(' ') {
                    Some((name, rest)) => (name.to_string(), Some(rest.to_string())),
                    None => (l.to_string(), None),
                }
            })
            .collect()
    }

    /// vsftpd 3.0.3 (Debian 12) with `ssl_enable=YES`, as the test harness runs it.
    const VSFTPD: &str = "211-Features:\r\n AUTH TLS\r\n EPRT\r\n EPSV\r\n MDTM\r\n PASV\r\n \
        PBSZ\r\n PROT\r\n REST STREAM\r\n SIZE\r\n TVFS\r\n211 End\r\n";

    /// ProFTPD 1.3.8 (Debian 12 `proftpd-core`) with `mod_digest` loaded.
    const PROFTPD: &str = "211-Features:\r\n CLNT\r\n CSID\r\n EPRT\r\n EPSV\r\n \
        HASH CRC32;MD5;SHA-1*;SHA-256;SHA-512;\r\n HOST\r\n LANG C.UTF-8*\r\n MD5\r\n MDTM\r\n \
        MFF modify;UNIX.group;UNIX.mode;\r\n MFMT\r\n \
        MLST modify*;perm*;size*;type*;unique*;UNIX.group*;UNIX.groupname*;UNIX.mode*;UNIX.owner*;UNIX.ownername*;\r\n \
        RANG STREAM\r\n REST STREAM\r\n SIZE\r\n TVFS\r\n UTF8\r\n XCRC\r\n XMD5\r\n XSHA\r\n \
        XSHA1\r\n XSHA256\r\n XSHA512\r\n211 End\r\n";

    #[test]
    fn vsftpd_offers_rest_and_no_hash() {
        let offers = Offers::from_feat(&features(VSFTPD));
        assert_eq!(
            offers,
            Offers {
                rest: true,
                ..Offers::default()
            }
        );
        assert_eq!(offers.summary(), "REST");
    }

    #[test]
    fn proftpd_with_mod_digest_offers_hashes_over_ranges() {
        let offers = Offers::from_feat(&features(PROFTPD));
        assert_eq!(
            offers,
            Offers {
                rest: true,
                hash: ["CRC32", "MD5", "SHA-1", "SHA-256", "SHA-512"]
                    .map(String::from)
                    .to_vec(),
                rang: true,
                xmd5: true,
                xcrc: true,
                xsha1: true,
                sftp_extensions: None,
            }
        );
        assert_eq!(
            offers.summary(),
            "REST HASH(CRC32,MD5,SHA-1,SHA-256,SHA-512) RANG XMD5 XCRC XSHA1"
        );
    }

    #[test]
    fn no_features_offer_nothing() {
        assert_eq!(
            Offers::from_feat(&features("211 no features\r\n")),
            Offers::default()
        );
        assert_eq!(Offers::default().summary(), "-");
    }

    #[test]
    fn names_are_matched_without_case_and_rest_needs_stream() {
        let offers = Offers::from_feat(&features(" rest\r\n hash md5\r\n xmd5\r\n"));
        assert!(!offers.rest, "REST without STREAM is not REST STREAM");
        assert_eq!(offers.hash, ["md5"]);
        assert!(offers.xmd5);
    }

    #[test]
    fn sftp_writes_at_offsets_and_lists_no_extension() {
        assert_eq!(Offers::sftp().summary(), "REST");
        assert_eq!(Offers::sftp().sftp_extensions, None);
    }
}
