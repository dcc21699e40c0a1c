//! What `--json` prints, as types: one tagged enum for the event stream of `send`
//! (and the `warning` and `error` lines every `--json` command can end with), and one
//! row type per table for `peers check`, `peers deploy` and `status`. Scripts parse
//! these lines, so a field keeps its name and shape once it is here; new fields may
//! be added. Printing is `progress::emit`'s job.

use serde::Serialize;
use std::collections::BTreeMap;

use crate::send::plan::{Plan, Strategy};

/// One line of a `--json` event stream, tagged by `type`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// `send --dry-run --json`: what would be sent, instead of sending it.
    Plan(PlanEvent),
    /// The transfer begins (after pre-flight and the resume check).
    Start(Start),
    /// About once a second: bytes sent so far, per host too.
    Progress {
        bytes: u64,
        /// Bytes this run sends (the file less what a resume found on the server).
        total: u64,
        seconds: f64,
        hosts: BTreeMap<String, u64>,
    },
    /// A part is on the server under its final name.
    PartDone {
        part: usize,
        host: String,
        bytes: u64,
        /// The part's XXH3-128, as the relay checked it.
        xxh3: String,
        seconds: f64,
    },
    /// The server merged every part.
    Merged {
        /// The server's MD5 of the merged file.
        md5: String,
        /// Since the start of the transfer.
        seconds: f64,
        /// How long the merge took after the last byte arrived.
        merge_wait: f64,
    },
    /// Something people should know; the command goes on.
    Warning { message: String },
    /// Every host fails against the server (`seconds` since the outage began).
    ServerUnreachable { seconds: f64 },
    /// The server answers again after an announced outage.
    ServerBack { seconds: f64 },
    /// The file is on the server under its name, verified.
    Done(Done),
    /// A send of several files: one file is on the server, verified (or was there).
    FileDone {
        /// Its path on the server, relative to the upload directory.
        path: String,
        source: String,
        bytes: u64,
        md5: String,
        already_there: bool,
    },
    /// A send of several files: all of them are on the server.
    ReleaseDone {
        files: usize,
        /// Sent in this command, and found already there.
        sent: usize,
        already_there: usize,
        bytes: u64,
        /// The checksum list's path on the server, if one was written.
        manifest: Option<String>,
        seconds: f64,
    },
    /// The command failed: the last line of its stream.
    Error {
        /// The same one line the command prints on stderr (without `relayup: error: `).
        message: String,
        exit_code: u8,
    },
}

/// The `plan` event: `--dry-run`'s plan for scripts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanEvent {
    pub file: String,
    pub dest: String,
    /// The server's upload directory and where it is (`ftp://host:21`).
    pub dir: String,
    pub server: String,
    pub bytes: u64,
    pub upload_id: String,
    /// The temp dir on the server that holds the parts until the merge.
    pub temp_dir: String,
    pub strategy: Strategy,
    pub hosts: Vec<String>,
    pub parts: Vec<PlanPart>,
}

/// One part of a plan.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanPart {
    pub index: usize,
    pub offset: u64,
    pub len: u64,
    /// The host that sends it, when the plan decides that (`equal`); with `adaptive`
    /// the next free host takes it, so `null`.
    pub host: Option<String>,
}

impl PlanPart {
    /// The plan's parts, with the host that sends each where the plan decides it.
    pub fn list(plan: &Plan, hosts: &[String]) -> Vec<PlanPart> {
        plan.parts
            .iter()
            .map(|p| PlanPart {
                index: p.index,
                offset: p.offset,
                len: p.len,
                host: match plan.strategy {
                    Strategy::Equal => plan
                        .owners
                        .get(p.index)
                        .and_then(|o| hosts.get(*o))
                        .cloned(),
                    Strategy::Adaptive => None,
                },
            })
            .collect()
    }
}

/// The `start` event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Start {
    pub file: String,
    pub dest: String,
    pub bytes: u64,
    pub parts: usize,
    pub hosts: Vec<String>,
    pub upload_id: String,
    /// Parts (and their bytes) an earlier run left on the server, not sent again.
    pub resumed_parts: usize,
    pub resumed_bytes: u64,
    pub strategy: Strategy,
}

/// The `done` event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Done {
    pub bytes: u64,
    pub seconds: f64,
    pub md5: String,
    pub dest: String,
    /// True unless `--verify none`: `done` comes only after the server's copy was
    /// checked against the source.
    pub verified: bool,
    /// How: `server-md5` (the whole file, by the merge login), `server-hash-ranges`
    /// (each part's range, by the server), `read-back` (each part read back and
    /// compared), or `none`.
    pub verification: String,
    /// The destination already held this very file; nothing was sent.
    pub already_there: bool,
    /// MB/s (10^6 bytes a second) over the whole send.
    pub mbps: f64,
    /// Per host: peers by name, this machine as `local`.
    pub hosts: BTreeMap<String, HostRate>,
}

/// One host's share of a send.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HostRate {
    pub bytes: u64,
    pub mbps: f64,
}

impl Done {
    /// `done` for a destination that already held this file.
    /// `verification`: how the destination's MD5 was had (`server-md5`, `read-back`).
    pub fn already_there(md5: &str, dest: &str, verification: &str) -> Done {
        Done {
            bytes: 0,
            seconds: 0.0,
            md5: md5.to_string(),
            dest: dest.to_string(),
            verified: true,
            verification: verification.into(),
            already_there: true,
            mbps: 0.0,
            hosts: BTreeMap::new(),
        }
    }
}

/// One line of `peers check --json`: a peer, the merge login or this machine's upload.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckRow {
    pub name: String,
    pub address: String,
    pub reachable: Option<bool>,
    pub host_key: Option<bool>,
    pub authenticated: Option<bool>,
    /// `relayup --version` there.
    pub relayup: Option<String>,
    /// The peer's relay logged into the server, as it would for a send.
    pub server_login: Option<bool>,
    pub staging_free_bytes: Option<u64>,
    /// Measured upload rate to the server, whole bytes a second (`null` with `--no-rate`).
    pub upload_bytes_per_sec: Option<f64>,
    pub ok: bool,
    pub problem: Option<String>,
    /// What the server offers, on the `server (upload)` row once its login worked
    /// (the other rows leave it out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offers: Option<crate::transport::offers::Offers>,
    /// Free bytes in the upload directory, on the `server (upload)` row where the
    /// server tells (SFTP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
}

/// One line of `peers deploy --json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeployRow {
    pub name: String,
    pub address: String,
    /// `uname -sm` there.
    pub os: Option<String>,
    /// `relayup --version` there before.
    pub before: Option<String>,
    /// `installed` or `up to date`; `null` when it failed.
    pub action: Option<&'static str>,
    pub ok: bool,
    pub problem: Option<String>,
    pub note: Option<String>,
}

/// One line of `status --json`: an unfinished send.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatusRow {
    pub id: String,
    /// Paths as text, lossily: a name that is not UTF-8 shows U+FFFD for its odd
    /// bytes (the journal itself keeps them exactly).
    pub source: String,
    pub dest: String,
    pub config: String,
    /// Seconds since the epoch when the send first started.
    pub started: u64,
    pub bytes: u64,
    pub parts: usize,
    /// What the server holds of it (left out with `--offline`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerState>,
}

/// One unfinished send as its server shows it (`relayup status`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServerState {
    /// The server could be asked (else `problem` says why).
    pub reachable: bool,
    /// `merge` or `direct`.
    pub kind: String,
    /// Parts there: complete part files (merge), or parts verified and within the
    /// file (direct).
    pub parts_there: usize,
    pub bytes_there: u64,
    /// The other parts' indexes, as ranges (`0-3,7`).
    pub missing: String,
    /// The lock's owner, when a run holds it.
    pub running: Option<String>,
    pub problem: Option<String>,
}

#[cfg(test)]
mod tests {
    //! Each line as the `json!` literals that came before these types printed it
    //! (field names and values), plus the exact text now printed.

    use super::*;
    use serde_json::{json, Value};

    fn same(event: &impl Serialize, before: Value, exact: &str) {
        let line = serde_json::to_string(event).unwrap();
        assert_eq!(line, exact);
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), before);
    }

    #[test]
    fn start() {
        same(
            &Event::Start(Start {
                file: "/d/big.iso".into(),
                dest: "big.iso".into(),
                bytes: 100,
                parts: 3,
                hosts: vec!["local".into(), "p1".into()],
                upload_id: "0123456789abcdef".into(),
                resumed_parts: 1,
                resumed_bytes: 40,
                strategy: Strategy::Adaptive,
            }),
            json!({"type": "start", "file": "/d/big.iso", "dest": "big.iso",
                "bytes": 100, "parts": 3, "hosts": ["local", "p1"], "upload_id": "0123456789abcdef",
                "resumed_parts": 1, "resumed_bytes": 40, "strategy": "adaptive"}),
            r#"{"type":"start","file":"/d/big.iso","dest":"big.iso","bytes":100,"parts":3,"hosts":["local","p1"],"upload_id":"0123456789abcdef","resumed_parts":1,"resumed_bytes":40,"strategy":"adaptive"}"#,
        );
    }

    #[test]
    fn progress() {
        let hosts = BTreeMap::from([("p1".to_string(), 7), ("local".to_string(), 5)]);
        same(
            &Event::Progress {
                bytes: 12,
                total: 100,
                seconds: 1.25,
                hosts,
            },
            json!({"type": "progress", "bytes": 12, "total": 100,
                "seconds": 1.25, "hosts": {"local": 5, "p1": 7}}),
            r#"{"type":"progress","bytes":12,"total":100,"seconds":1.25,"hosts":{"local":5,"p1":7}}"#,
        );
    }

    #[test]
    fn part_done_and_merged() {
        same(
            &Event::PartDone {
                part: 2,
                host: "p1".into(),
                bytes: 1024,
                xxh3: "00ff".into(),
                seconds: 0.5,
            },
            json!({"type": "part_done", "part": 2, "host": "p1",
                "bytes": 1024, "xxh3": "00ff", "seconds": 0.5}),
            r#"{"type":"part_done","part":2,"host":"p1","bytes":1024,"xxh3":"00ff","seconds":0.5}"#,
        );
        same(
            &Event::Merged {
                md5: "d41d8cd98f00b204e9800998ecf8427e".into(),
                seconds: 3.0,
                merge_wait: 0.12,
            },
            json!({"type": "merged", "md5": "d41d8cd98f00b204e9800998ecf8427e", "seconds": 3.0,
                "merge_wait": 0.12}),
            r#"{"type":"merged","md5":"d41d8cd98f00b204e9800998ecf8427e","seconds":3.0,"merge_wait":0.12}"#,
        );
    }

    #[test]
    fn warnings_outages_and_errors() {
        same(
            &Event::Warning {
                message: "p1 dropped: \"x\"".into(),
            },
            json!({"type": "warning", "message": "p1 dropped: \"x\""}),
            r#"{"type":"warning","message":"p1 dropped: \"x\""}"#,
        );
        same(
            &Event::ServerUnreachable { seconds: 12.0 },
            json!({"type": "server_unreachable", "seconds": 12.0}),
            r#"{"type":"server_unreachable","seconds":12.0}"#,
        );
        same(
            &Event::ServerBack { seconds: 20.5 },
            json!({"type": "server_back", "seconds": 20.5}),
            r#"{"type":"server_back","seconds":20.5}"#,
        );
        same(
            &Event::Error {
                message: "no host could finish the upload".into(),
                exit_code: 4,
            },
            json!({"type": "error", "message": "no host could finish the upload", "exit_code": 4}),
            r#"{"type":"error","message":"no host could finish the upload","exit_code":4}"#,
        );
    }

    #[test]
    fn done_after_a_send_and_when_already_there() {
        let hosts = BTreeMap::from([
            (
                "local".to_string(),
                HostRate {
                    bytes: 60,
                    mbps: 1.5,
                },
            ),
            (
                "p1".to_string(),
                HostRate {
                    bytes: 40,
                    mbps: 1.0,
                },
            ),
        ]);
        let done = Done {
            bytes: 100,
            seconds: 0.04,
            md5: "abc".into(),
            dest: "f".into(),
            verified: true,
            verification: "server-md5".into(),
            already_there: false,
            mbps: 2.5,
            hosts,
        };
        let mut before = json!({"type": "done", "bytes": 100, "seconds": 0.04, "md5": "abc",
            "dest": "f", "verified": true, "mbps": 2.5,
            "hosts": {"local": {"bytes": 60, "mbps": 1.5}, "p1": {"bytes": 40, "mbps": 1.0}}});
        // Added since: both kinds of `done` carry both fields.
        before["already_there"] = json!(false);
        before["verification"] = json!("server-md5");
        same(
            &Event::Done(done),
            before,
            r#"{"type":"done","bytes":100,"seconds":0.04,"md5":"abc","dest":"f","verified":true,"verification":"server-md5","already_there":false,"mbps":2.5,"hosts":{"local":{"bytes":60,"mbps":1.5},"p1":{"bytes":40,"mbps":1.0}}}"#,
        );
        let mut before = json!({"type": "done", "bytes": 0, "seconds": 0.0, "md5": "abc", "dest": "f",
            "verified": true, "already_there": true, "hosts": {}});
        before["mbps"] = json!(0.0);
        before["verification"] = json!("server-md5");
        same(
            &Event::Done(Done::already_there("abc", "f", "server-md5")),
            before,
            r#"{"type":"done","bytes":0,"seconds":0.0,"md5":"abc","dest":"f","verified":true,"verification":"server-md5","already_there":true,"mbps":0.0,"hosts":{}}"#,
        );
    }

    #[test]
    fn plan() {
        same(
            &Event::Plan(PlanEvent {
                file: "/d/f".into(),
                dest: "f".into(),
                dir: "/srv".into(),
                server: "ftp://127.0.0.1:21".into(),
                bytes: 10,
                upload_id: "0123456789abcdef".into(),
                temp_dir: "/srv/.relayup-0123456789abcdef".into(),
                strategy: Strategy::Equal,
                hosts: vec!["local".into(), "p1".into()],
                parts: vec![
                    PlanPart {
                        index: 0,
                        offset: 0,
                        len: 5,
                        host: Some("local".into()),
                    },
                    PlanPart {
                        index: 1,
                        offset: 5,
                        len: 5,
                        host: None,
                    },
                ],
            }),
            json!({"type": "plan", "file": "/d/f", "dest": "f", "dir": "/srv",
                "server": "ftp://127.0.0.1:21", "bytes": 10, "upload_id": "0123456789abcdef",
                "temp_dir": "/srv/.relayup-0123456789abcdef", "strategy": "equal",
                "hosts": ["local", "p1"], "parts": [
                    {"index": 0, "offset": 0, "len": 5, "host": "local"},
                    {"index": 1, "offset": 5, "len": 5, "host": null}]}),
            r#"{"type":"plan","file":"/d/f","dest":"f","dir":"/srv","server":"ftp://127.0.0.1:21","bytes":10,"upload_id":"0123456789abcdef","temp_dir":"/srv/.relayup-0123456789abcdef","strategy":"equal","hosts":["local","p1"],"parts":[{"index":0,"offset":0,"len":5,"host":"local"},{"index":1,"offset":5,"len":5,"host":null}]}"#,
        );
    }

    #[test]
    fn upload_row_with_offers() {
        let offers = crate::transport::offers::Offers {
            rest: true,
            hash: vec!["MD5".into(), "SHA-1".into()],
            xmd5: true,
            ..Default::default()
        };
        same(
            &CheckRow {
                name: "server (upload)".into(),
                address: "u@ftp://h:21".into(),
                reachable: None,
                host_key: None,
                authenticated: None,
                relayup: None,
                server_login: Some(true),
                staging_free_bytes: None,
                upload_bytes_per_sec: None,
                ok: true,
                problem: None,
                offers: Some(offers),
                free_bytes: None,
            },
            json!({"name": "server (upload)", "address": "u@ftp://h:21", "reachable": null,
                "host_key": null, "authenticated": null, "relayup": null, "server_login": true,
                "staging_free_bytes": null, "upload_bytes_per_sec": null, "ok": true,
                "problem": null, "offers": {"rest": true, "hash": ["MD5", "SHA-1"],
                "rang": false, "xmd5": true, "xcrc": false, "xsha1": false,
                "sftp_extensions": null}}),
            r#"{"name":"server (upload)","address":"u@ftp://h:21","reachable":null,"host_key":null,"authenticated":null,"relayup":null,"server_login":true,"staging_free_bytes":null,"upload_bytes_per_sec":null,"ok":true,"problem":null,"offers":{"rest":true,"hash":["MD5","SHA-1"],"rang":false,"xmd5":true,"xcrc":false,"xsha1":false,"sftp_extensions":null}}"#,
        );
    }

    #[test]
    fn rows() {
        same(
            &CheckRow {
                name: "p1".into(),
                address: "u@h:22".into(),
                reachable: Some(true),
                host_key: Some(true),
                authenticated: Some(false),
                relayup: None,
                server_login: None,
                staging_free_bytes: None,
                upload_bytes_per_sec: Some(1234.0),
                ok: false,
                problem: Some("auth".into()),
                offers: None,
                free_bytes: None,
            },
            json!({"name": "p1", "address": "u@h:22", "reachable": true, "host_key": true,
                "authenticated": false, "relayup": null, "server_login": null,
                "staging_free_bytes": null, "upload_bytes_per_sec": 1234.0,
                "ok": false, "problem": "auth"}),
            r#"{"name":"p1","address":"u@h:22","reachable":true,"host_key":true,"authenticated":false,"relayup":null,"server_login":null,"staging_free_bytes":null,"upload_bytes_per_sec":1234.0,"ok":false,"problem":"auth"}"#,
        );
        same(
            &DeployRow {
                name: "p1".into(),
                address: "u@h:22".into(),
                os: Some("Linux x86_64".into()),
                before: None,
                action: Some("installed"),
                ok: true,
                problem: None,
                note: None,
            },
            json!({"name": "p1", "address": "u@h:22", "os": "Linux x86_64", "before": null,
                "action": "installed", "ok": true, "problem": null, "note": null}),
            r#"{"name":"p1","address":"u@h:22","os":"Linux x86_64","before":null,"action":"installed","ok":true,"problem":null,"note":null}"#,
        );
        same(
            &StatusRow {
                id: "0123456789abcdef".into(),
                source: "/d/f".into(),
                dest: "f".into(),
                config: "/c.toml".into(),
                started: 1,
                bytes: 10,
                parts: 2,
                server: None,
            },
            json!({"id": "0123456789abcdef", "source": "/d/f", "dest": "f", "config": "/c.toml",
                "started": 1, "bytes": 10, "parts": 2}),
            r#"{"id":"0123456789abcdef","source":"/d/f","dest":"f","config":"/c.toml","started":1,"bytes":10,"parts":2}"#,
        );
    }
}
