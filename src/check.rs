//! `relayup peers check`: can each peer take part, and does the merge login work?

use anyhow::Result;
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;

use crate::config::{self, Login, Peer};
use crate::error::{with_code, Code};
use crate::peer::PeerLink;
use crate::protocol::{Request, ServerSpec, PROTOCOL};
use crate::quote;
use crate::ssh::{self, Trust};
use crate::transport::{Server, ServerTrust};

struct Row {
    name: String,
    address: String,
    /// The first check that failed, or `ok`.
    reachable: Option<bool>,
    host_key: Option<bool>,
    auth: Option<bool>,
    version: Option<String>,
    /// The peer's relay logged into the server (as it would for a send).
    server_login: Option<bool>,
    /// Free space in the peer's staging directory, bytes.
    free: Option<u64>,
    problem: Option<String>,
}

fn classify(e: &anyhow::Error) -> &'static str {
    let s = format!("{e:#}");
    if s.contains("cannot connect") || s.contains("cannot resolve") || s.contains("handshake") {
        "reachable"
    } else if s.contains("host key") || s.contains("HOST KEY") {
        "host_key"
    } else {
        "auth"
    }
}

/// Upload id of a check: names nothing on the server (no part is uploaded).
const CHECK_ID: &str = "peerscheck";

/// Starts the peer's relay as a send would, has it log into the server, and returns
/// the free space in its staging directory.
fn relay_probe(p: &Peer, known_hosts: &Path, server: &ServerSpec) -> Result<u64> {
    let mut link = PeerLink::connect(p, known_hosts)?;
    link.hello(&Request::Hello {
        protocol: PROTOCOL,
        upload_id: CHECK_ID.into(),
        host: p.login.name.clone(),
        server: Box::new(server.clone()),
        staging: p.staging.clone(),
    })?;
    let free = link.staging_free();
    link.close();
    free
}

fn probe(login: &Login, known_hosts: &Path, command: Option<&str>) -> Row {
    let mut row = Row {
        name: login.name.clone(),
        address: format!("{}@{}:{}", login.user, login.host, login.port),
        reachable: None,
        host_key: None,
        auth: None,
        version: None,
        server_login: None,
        free: None,
        problem: None,
    };
    let session = match ssh::connect(login, Trust::KnownHosts(known_hosts), None) {
        Ok(s) => s,
        Err(e) => {
            match classify(&e) {
                "reachable" => row.reachable = Some(false),
                "host_key" => {
                    row.reachable = Some(true);
                    row.host_key = Some(false)
                }
                _ => {
                    row.reachable = Some(true);
                    row.host_key = Some(true);
                    row.auth = Some(false)
                }
            }
            row.problem = Some(format!("{e:#}"));
            return row;
        }
    };
    row.reachable = Some(true);
    row.host_key = Some(true);
    row.auth = Some(true);
    if let Some(cmd) = command {
        match ssh::run(&session, cmd) {
            Ok(out) if out.status == 0 => row.version = Some(out.stdout.trim().to_string()),
            Ok(out) if out.status == 127 => row.problem = Some(
                "relayup not found: run `relayup peers deploy`, or set `relayup = \"/path\"` for this peer"
                    .into(),
            ),
            Ok(out) => row.problem = Some(format!("exit {}: {}", out.status, out.stderr.trim())),
            Err(e) => row.problem = Some(format!("{e:#}")),
        }
    }
    row
}

pub fn run(config_path: Option<&Path>, as_json: bool) -> Result<ExitCode> {
    let path = config::config_path(config_path).map_err(|e| with_code(e, Code::Usage))?;
    let settings = config::load(&path).map_err(|e| with_code(e, Code::Usage))?;
    let kh = &settings.known_hosts;
    // This machine's own server login, which also yields the sftp host key relays need.
    let mut upload = Row {
        name: "server (upload)".into(),
        address: format!(
            "{}@{}://{}:{}",
            settings.server.user,
            settings.server.scheme,
            settings.server.host,
            settings.server.port
        ),
        reachable: None,
        host_key: None,
        auth: None,
        version: None,
        server_login: None,
        free: None,
        problem: None,
    };
    let mut server = settings.server.clone();
    match Server::connect(
        &settings.server,
        CHECK_ID,
        "local",
        ServerTrust::KnownHosts(settings.known_hosts.clone()),
        settings.merge.login.identity.as_deref(),
    ) {
        Ok((_, key)) => {
            server.host_key = key;
            upload.server_login = Some(true);
        }
        Err(e) => {
            upload.server_login = Some(false);
            upload.problem = Some(format!("{e:#}"));
        }
    }
    let server = &server;
    let mut rows: Vec<Row> = std::thread::scope(|s| {
        let handles: Vec<_> = settings
            .peers
            .iter()
            .map(|p| {
                let cmd = format!("{} --version", p.invocation());
                s.spawn(move || {
                    let mut row = probe(&p.login, kh, Some(&cmd));
                    if row.problem.is_none() {
                        match relay_probe(p, kh, server) {
                            Ok(free) => {
                                row.server_login = Some(true);
                                row.free = Some(free);
                            }
                            Err(e) => {
                                row.server_login = Some(false);
                                row.problem = Some(format!("{e:#}"));
                            }
                        }
                    }
                    row
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe does not panic"))
            .collect()
    });
    let dir = quote::sh(&settings.merge.dir);
    let mut merge = probe(
        &settings.merge.login,
        kh,
        Some(&format!(
            "cd -- {dir} && test -w . && command -v md5sum >/dev/null && echo ok"
        )),
    );
    merge.name = "server (merge)".into();
    if merge.auth == Some(true)
        && merge.version.is_none()
        && merge
            .problem
            .as_deref()
            .is_some_and(|p| p.starts_with("exit"))
    {
        merge.problem = Some(format!(
            "{} is missing, not writable, or md5sum is not installed",
            settings.merge.dir
        ));
    }
    rows.push(merge);
    rows.push(upload);

    let ok = |r: &Row| r.problem.is_none();
    if as_json {
        for r in &rows {
            println!(
                "{}",
                json!({"name": r.name, "address": r.address, "reachable": r.reachable, "host_key": r.host_key,
                    "authenticated": r.auth, "relayup": r.version, "server_login": r.server_login,
                    "staging_free_bytes": r.free, "ok": ok(r), "problem": r.problem})
            );
        }
    } else {
        let mark = |v: Option<bool>| match v {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        println!(
            "{:<16} {:<32} {:<9} {:<8} {:<5} {:<16} {:<6} {:>10} problem",
            "peer", "address", "reachable", "host key", "login", "relayup", "server", "free"
        );
        for r in &rows {
            println!(
                "{:<16} {:<32} {:<9} {:<8} {:<5} {:<16} {:<6} {:>10} {}",
                r.name,
                r.address,
                mark(r.reachable),
                mark(r.host_key),
                mark(r.auth),
                r.version.as_deref().unwrap_or("-"),
                mark(r.server_login),
                r.free.map(crate::size::human).unwrap_or_else(|| "-".into()),
                r.problem.as_deref().unwrap_or("")
            );
        }
    }
    let failed = rows.iter().filter(|r| !ok(r)).count();
    if failed > 0 {
        eprintln!("relayup: {failed} of {} logins have a problem", rows.len());
        return Ok(ExitCode::from(Code::Connect.exit_code()));
    }
    Ok(ExitCode::SUCCESS)
}
