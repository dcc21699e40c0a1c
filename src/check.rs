//! `relayup peers check`: can each peer take part, and does the merge login work?

use anyhow::Result;
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;

use crate::config::{self, Login};
use crate::error::{with_code, Code};
use crate::quote;
use crate::ssh::{self, Trust};

struct Row {
    name: String,
    address: String,
    /// The first check that failed, or `ok`.
    reachable: Option<bool>,
    host_key: Option<bool>,
    auth: Option<bool>,
    version: Option<String>,
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

fn probe(login: &Login, known_hosts: &Path, command: Option<&str>) -> Row {
    let mut row = Row {
        name: login.name.clone(),
        address: format!("{}@{}:{}", login.user, login.host, login.port),
        reachable: None,
        host_key: None,
        auth: None,
        version: None,
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
                "relayup not found: install it there or set `relayup = \"/path\"` for this peer"
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
    let mut rows: Vec<Row> = std::thread::scope(|s| {
        let handles: Vec<_> = settings
            .peers
            .iter()
            .map(|p| {
                let cmd = format!("{} --version", quote::sh_home(&p.relayup));
                s.spawn(move || probe(&p.login, kh, Some(&cmd)))
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

    let ok = |r: &Row| r.problem.is_none();
    if as_json {
        for r in &rows {
            println!(
                "{}",
                json!({"name": r.name, "address": r.address, "reachable": r.reachable, "host_key": r.host_key,
                    "authenticated": r.auth, "relayup": r.version, "ok": ok(r), "problem": r.problem})
            );
        }
    } else {
        let mark = |v: Option<bool>| match v {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        println!(
            "{:<16} {:<32} {:<9} {:<8} {:<5} {:<16} problem",
            "peer", "address", "reachable", "host key", "login", "relayup"
        );
        for r in &rows {
            println!(
                "{:<16} {:<32} {:<9} {:<8} {:<5} {:<16} {}",
                r.name,
                r.address,
                mark(r.reachable),
                mark(r.host_key),
                mark(r.auth),
                r.version.as_deref().unwrap_or("-"),
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
