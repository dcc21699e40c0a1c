//! The peer protocol: JSON lines between `relayup send` and `relayup relay`.
//! Requests go to the relay's stdin, events come back on its stdout.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Read};

use crate::secret::Secret;

/// Bumped whenever a message changes shape; client and relay must agree.
pub const PROTOCOL: u32 = 8;

fn default_stall() -> u64 {
    30
}

/// How often the client pings each relay while it has nothing else to say.
pub const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a relay waits for a word from its client before it gives up on it: the
/// client may be blocked for up to `stall_timeout` reading the relay's events, so
/// allow that plus half a minute (60 s with the default 30 s).
pub fn relay_idle_limit(stall_timeout: u64) -> std::time::Duration {
    std::time::Duration::from_secs(stall_timeout.max(1) + 30)
}

/// The first request: who the relay works for and where it uploads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub protocol: u32,
    pub upload_id: String,
    /// This run's own id: in every name the relay writes (staged parts and temporary
    /// upload names), so two runs of one send never share a file.
    pub run: String,
    /// The client's name for this peer (tags its temporary upload names).
    pub host: String,
    pub server: Box<ServerSpec>,
    /// Staging directory on the peer; `None` = `~/.cache/relayup`.
    pub staging: Option<String>,
    /// `--stall-timeout` in seconds: the relay's network calls to the server give up
    /// after that long without a byte moving, as the client's do.
    #[serde(default = "default_stall")]
    pub stall_timeout: u64,
}

/// Longest line either side accepts; anything longer is an error, not an allocation.
pub const MAX_LINE: usize = 64 * 1024;

/// Longest `hello` line: it carries `server.ca_file`, which may be a whole system CA
/// bundle (about 200 KiB on Debian). [`MAX_CA_FILE`] of PEM fits with room to spare
/// for JSON escaping (one `\n` per 64-character line) and the other fields.
pub const MAX_HELLO_LINE: usize = 2 * MAX_CA_FILE;

/// Largest `server.ca_file` relayup accepts (the config check refuses a larger one).
pub const MAX_CA_FILE: usize = 1024 * 1024;

/// How every `hello` line starts (serde writes the tag first): only such a line may
/// grow past [`MAX_LINE`].
const HELLO_PREFIX: &[u8] = b"{\"type\":\"hello\"";

/// Where and how a host uploads to the server. Sent to relays in `hello`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// `ftp`, `ftps` or `sftp`.
    pub scheme: String,
    pub host: String,
    pub port: u16,
    /// Upload directory as the server shows it (absolute).
    pub dir: String,
    pub user: String,
    /// `None` for `sftp://` with keys.
    pub password: Option<Secret>,
    /// For `sftp://`: the server's host key (`type base64`) the client trusts; relays
    /// accept no other.
    pub host_key: Option<String>,
    /// Upload rate limit per host, bytes per second (`--bwlimit`), until a `limit`
    /// request says otherwise.
    #[serde(default)]
    pub bwlimit: Option<u64>,
    /// For `ftps://`: extra CA certificates (PEM) to trust besides the system's.
    #[serde(default)]
    pub ca_pem: Option<String>,
}

impl ServerSpec {
    /// `scheme://host:port`, for messages.
    pub fn url(&self) -> String {
        format!("{}://{}:{}", self.scheme, self.host, self.port)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Hello(Hello),
    /// Nothing to do: the client is there. A relay that hears nothing from its client
    /// for [`relay_idle_limit`] stops (see `relay::run`).
    Ping,
    /// Upload the staged file `file` (a name inside the staging dir) as part `index`.
    Upload {
        index: usize,
        file: String,
        size: u64,
        /// XXH3-128 of the part, hex: the relay checks the staged copy against it.
        xxh3: String,
        /// Direct writes: write the part into the upload's one file at this offset
        /// instead of uploading it as a part file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// Direct writes: the file in the upload's temp dir the part goes to (whole,
        /// or at `offset`) instead of its own part file: `file` for one file's send,
        /// `<k>.file` in a release.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        into: Option<String>,
    },
    /// From now on, upload at most this many bytes per second (at least 1), also in
    /// the part being uploaded: this peer's share of `--bwlimit-total` changed.
    Limit {
        bytes_per_sec: u64,
    },
    /// The client is done with this relay (nothing in flight); end of input follows.
    /// End of input *without* it means the client went away, perhaps mid-staging.
    Bye,
    /// Instead of `hello`: remove every part this peer staged for upload `upload_id`
    /// (any run's), in `staging` (`None`: the default), answer `cleaned` and exit.
    Clean {
        upload_id: String,
        staging: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// The relay's first line, before it reads anything: the client knows then that
    /// it is talking to relayup (and not to a shell that could not find it) before
    /// it sends the server's password.
    Relay {
        version: String,
        protocol: u32,
        /// The platform it was built for, as `uname -sm` spells it.
        platform: String,
    },
    /// The answer to `clean`: how many staged files were removed.
    Cleaned {
        removed: usize,
    },
    Ready {
        version: String,
        protocol: u32,
        /// Absolute staging directory, created with mode 0700.
        staging: String,
        /// Free bytes there, if the relay could tell.
        #[serde(default)]
        staging_free: Option<u64>,
    },
    Progress {
        index: usize,
        bytes: u64,
    },
    PartDone {
        index: usize,
        bytes: u64,
        xxh3: String,
    },
    Error {
        index: Option<usize>,
        message: String,
        /// The upload to the server failed (after the relay's own retries), as
        /// opposed to a problem on the peer: the client tells a server outage from
        /// one host's trouble by these.
        #[serde(default)]
        server: bool,
    },
}

/// Reads one line of at most [`MAX_LINE`] bytes, or [`MAX_HELLO_LINE`] for a `hello`;
/// `Ok(None)` at end of input.
pub fn read_line<R: BufRead>(reader: &mut R) -> Result<Option<String>> {
    let mut buf = Vec::new();
    let n = Read::take(&mut *reader, MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
        .context("reading a protocol line")?;
    if n == 0 {
        return Ok(None);
    }
    let mut max = MAX_LINE;
    if buf.last() != Some(&b'\n') && buf.len() > MAX_LINE && buf.starts_with(HELLO_PREFIX) {
        max = MAX_HELLO_LINE;
        Read::take(&mut *reader, (MAX_HELLO_LINE - buf.len()) as u64 + 1)
            .read_until(b'\n', &mut buf)
            .context("reading a protocol line")?;
    }
    if buf.last() != Some(&b'\n') {
        if buf.len() > max {
            bail!("protocol line longer than {max} bytes");
        }
        bail!("protocol line cut off before its end");
    }
    buf.pop();
    String::from_utf8(buf)
        .map(Some)
        .context("protocol line is not UTF-8")
}

pub fn parse_request(line: &str) -> Result<Request> {
    serde_json::from_str(line).with_context(|| format!("bad request {:?}", clip(line)))
}

pub fn parse_event(line: &str) -> Result<Event> {
    serde_json::from_str(line).with_context(|| format!("bad event {:?}", clip(line)))
}

/// One JSON line, newline included.
pub fn to_line<T: Serialize>(msg: &T) -> String {
    let mut s = serde_json::to_string(msg).expect("protocol messages always serialize");
    s.push('\n');
    s
}

fn clip(s: &str) -> String {
    // Never echo a whole request: it may be a hello with a password in it.
    let head: String = s.chars().take(40).collect();
    if s.contains("password") {
        "(request with credentials)".into()
    } else {
        head
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn requests_round_trip() {
        let hello = hello_with(|s| s.bwlimit = Some(1000));
        let line = to_line(&hello);
        assert!(line.ends_with('\n'));
        assert_eq!(parse_request(line.trim_end()).unwrap(), hello);
        assert!(
            !format!("{hello:?}").contains("pw\""),
            "Debug hides the password"
        );
        let up = Request::Upload {
            index: 3,
            file: "x-3.part".into(),
            size: 10,
            xxh3: "00".into(),
            offset: None,
            into: None,
        };
        assert_eq!(parse_request(to_line(&up).trim_end()).unwrap(), up);
        // A direct write names its offset; without one the line is as before.
        assert!(!to_line(&up).contains("offset") && !to_line(&up).contains("into"));
        let at = Request::Upload {
            index: 3,
            file: "x-3.part".into(),
            size: 10,
            xxh3: "00".into(),
            offset: Some(1 << 40),
            into: Some("3.file".into()),
        };
        assert_eq!(parse_request(to_line(&at).trim_end()).unwrap(), at);
        assert_eq!(to_line(&Request::Bye), "{\"type\":\"bye\"}\n");
        let limit = Request::Limit {
            bytes_per_sec: 2_500_000,
        };
        assert_eq!(
            to_line(&limit),
            "{\"type\":\"limit\",\"bytes_per_sec\":2500000}\n"
        );
        assert_eq!(parse_request(to_line(&limit).trim_end()).unwrap(), limit);
        assert_eq!(parse_request("{\"type\":\"bye\"}").unwrap(), Request::Bye);
    }

    #[test]
    fn events_round_trip() {
        let evs = [
            Event::Ready {
                version: "1".into(),
                protocol: 1,
                staging: "/s".into(),
                staging_free: Some(7),
            },
            Event::Progress { index: 1, bytes: 5 },
            Event::PartDone {
                index: 1,
                bytes: 5,
                xxh3: "ab".into(),
            },
            Event::Error {
                index: None,
                message: "boom".into(),
                server: true,
            },
        ];
        for ev in evs {
            assert_eq!(parse_event(to_line(&ev).trim_end()).unwrap(), ev);
        }
        assert_eq!(
            to_line(&Event::Progress { index: 2, bytes: 7 }),
            "{\"type\":\"progress\",\"index\":2,\"bytes\":7}\n"
        );
    }

    #[test]
    fn rejects_unknown_and_malformed() {
        for bad in [
            "",
            "{}",
            "{\"type\":\"launch_missiles\"}",
            "{\"type\":\"upload\",\"index\":1}",
            "{\"type\":\"upload\",\"index\":-1,\"file\":\"a\",\"size\":1,\"xxh3\":\"\"}",
            "{\"type\":\"progress\",\"index\":1,\"bytes\":2,\"extra\":3}",
            "{\"type\":\"limit\"}",
            "{\"type\":\"limit\",\"bytes_per_sec\":-1}",
            "{\"type\":\"limit\",\"bytes_per_sec\":\"5MiB\"}",
            "not json",
        ] {
            assert!(
                parse_request(bad).is_err() || parse_event(bad).is_err(),
                "{bad}"
            );
        }
        assert!(parse_request("{\"type\":\"progress\",\"index\":1,\"bytes\":2}").is_err());
    }

    #[test]
    fn bad_request_errors_never_echo_passwords() {
        let err = parse_request("{\"type\":\"hello\",\"password\":\"hunter2\"").unwrap_err();
        assert!(!format!("{err:#}").contains("hunter2"));
    }

    #[test]
    fn line_reader_is_bounded() {
        let mut ok = Cursor::new(b"one\ntwo\n".to_vec());
        assert_eq!(read_line(&mut ok).unwrap().as_deref(), Some("one"));
        assert_eq!(read_line(&mut ok).unwrap().as_deref(), Some("two"));
        assert_eq!(read_line(&mut ok).unwrap(), None);
        let mut long = Cursor::new(vec![b'a'; MAX_LINE + 10]);
        assert!(read_line(&mut long).is_err());
        let mut cut = Cursor::new(b"partial".to_vec());
        assert!(read_line(&mut cut).is_err());
        let mut bin = Cursor::new(b"\xff\xfe\n".to_vec());
        assert!(read_line(&mut bin).is_err());
    }

    /// A hello for an `ftp://` server, changed by `edit`.
    fn hello_with(edit: impl FnOnce(&mut ServerSpec)) -> Request {
        let mut server = ServerSpec {
            scheme: "ftp".into(),
            host: "h".into(),
            port: 21,
            dir: "/up".into(),
            user: "u".into(),
            password: Some(Secret::new("pw")),
            host_key: None,
            bwlimit: None,
            ca_pem: None,
        };
        edit(&mut server);
        Request::Hello(Hello {
            protocol: PROTOCOL,
            upload_id: "abc".into(),
            run: "r1".into(),
            host: "alice".into(),
            server: Box::new(server),
            staging: None,
            stall_timeout: 30,
        })
    }

    fn hello_with_ca(pem: String) -> Request {
        hello_with(|s| {
            s.scheme = "ftps".into();
            s.ca_pem = Some(pem);
        })
    }

    #[test]
    fn a_hello_carries_a_ca_bundle_of_the_largest_size_accepted() {
        // PEM as a CA bundle is: 64-character lines.
        let line = format!("{}\n", "A".repeat(64));
        let pem = line.repeat(MAX_CA_FILE / line.len());
        let hello = hello_with_ca(pem);
        let text = to_line(&hello);
        assert!(text.len() > MAX_LINE && text.len() <= MAX_HELLO_LINE);
        let mut input = Cursor::new(format!("{text}{}", to_line(&Request::Bye)).into_bytes());
        let got = read_line(&mut input).unwrap().unwrap();
        assert_eq!(parse_request(&got).unwrap(), hello);
        assert_eq!(
            read_line(&mut input).unwrap().as_deref(),
            Some("{\"type\":\"bye\"}")
        );

        // Still bounded: a longer hello, and any other long line, are refused.
        let mut huge =
            Cursor::new(to_line(&hello_with_ca("A".repeat(MAX_HELLO_LINE))).into_bytes());
        assert!(format!("{:#}", read_line(&mut huge).unwrap_err()).contains("longer than"));
        let mut event = Cursor::new(
            to_line(&Event::Error {
                index: None,
                message: "A".repeat(MAX_LINE),
                server: false,
            })
            .into_bytes(),
        );
        assert!(read_line(&mut event).is_err());
    }
}
