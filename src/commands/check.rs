//! `relayup peers check`: can each peer take part, and does the merge login work?
//! The data-path probes (server logins, relays, upload rates) are in `probe.rs`.

use anyhow::{anyhow, Context, Result};
use std::process::ExitCode;

use super::probe::{Relay, Target, Uplink};
use crate::config::{self, KnownHosts, Login, Peer, Settings};
use crate::error::{with_code, Code};
use crate::events::CheckRow;
use crate::progress;
use crate::remote::quote;
use crate::remote::ssh::{self, Trust};
use crate::transport::Offers;

#[derive(Default)]
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
    /// Measured upload rate to the server, bytes per second.
    rate: Option<f64>,
    problem: Option<String>,
    /// What the server offers (the `server (upload)` row, once logged in).
    offers: Option<Offers>,
    /// Free space in the upload directory (the `server (upload)` row), where the
    /// server tells.
    server_free: Option<u64>,
}

fn classify(e: &anyhow::Error) -> &'static str {
    if e.downcast_ref::<ssh::Unreachable>().is_some() {
        "reachable"
    } else if e.downcast_ref::<ssh::HostKeyProblem>().is_some() {
        "host_key"
    } else {
        "auth"
    }
}

/// The SSH-level checks of one login (reachable, host key, login), then `command`'s
/// output as the row's version.
fn check_login(login: &Login, known_hosts: &KnownHosts, command: Option<&str>) -> Row {
    let mut row = Row {
        name: login.name.clone(),
        address: format!("{}@{}:{}", login.user, login.host, login.port),
        ..Row::default()
    };
    let session = match ssh::connect(
        login,
        Trust::KnownHosts(known_hosts),
        None,
        config::DEFAULT_IO_TIMEOUT,
    ) {
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

/// This machine's own server login, as the `server (upload)` row; its connection is
/// kept for the rate probe.
fn check_upload(settings: &Settings, target: &mut Target) -> (Row, Option<Uplink>) {
    let mut upload = Row {
        name: "server (upload)".into(),
        address: format!(
            "{}@{}://{}:{}",
            settings.server.user,
            settings.server.scheme,
            settings.server.host,
            settings.server.port
        ),
        ..Row::default()
    };
    let mut local = None;
    match target.login(settings) {
        Ok(mut conn) => {
            upload.server_login = Some(true);
            upload.offers = Some(conn.offers().clone());
            upload.server_free = conn.free();
            local = Some(conn);
        }
        Err(e) => {
            upload.server_login = Some(false);
            upload.problem = Some(format!("{e:#}"));
        }
    }
    (upload, local)
}

/// One peer's row: its login, then its relay's server login. The relay stays up
/// after its checks, for the rate probe.
/// Nothing but the relay runs there: its greeting gives the version.
fn check_peer(p: &Peer, known_hosts: &KnownHosts, target: &Target) -> (Row, Option<Relay>) {
    let mut row = check_login(&p.login, known_hosts, None);
    let mut relay = None;
    if row.problem.is_none() {
        match target.relay(p, known_hosts) {
            Ok(r) => {
                row.version = Some(format!("relayup {}", r.link.version));
                row.server_login = Some(true);
                row.free = Some(r.free);
                relay = Some(r);
            }
            Err(e) => {
                row.server_login = Some(false);
                row.problem = Some(format!("{e:#}"));
            }
        }
    }
    (row, relay)
}

/// Every peer's row, checked in parallel, and the relays that came up (by row index).
fn check_peers(settings: &Settings, target: &Target) -> (Vec<Row>, Vec<(usize, Relay)>) {
    let kh = &settings.known_hosts;
    let mut relays = Vec::new();
    let rows = std::thread::scope(|s| {
        let handles: Vec<_> = settings
            .peers
            .iter()
            .map(|p| s.spawn(move || check_peer(p, kh, target)))
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                let (row, relay) = h.join().expect("probe does not panic");
                relays.extend(relay.map(|r| (i, r)));
                row
            })
            .collect()
    });
    (rows, relays)
}

/// The merge login, as the `server (merge)` row: its directory is writable and it
/// has md5sum.
fn check_merge(settings: &Settings, m: &crate::config::Merge) -> Row {
    let dir = quote::sh(&m.dir);
    let mut merge = check_login(
        &m.login,
        &settings.known_hosts,
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
            m.dir
        ));
    }
    merge
}

/// Puts each measured rate, or why it failed, into its row.
fn add_rates(rows: &mut [Row], measured: Result<Vec<(usize, Result<f64>)>>) {
    match measured {
        Ok(results) => {
            for (i, r) in results {
                match r {
                    Ok(rate) => rows[i].rate = Some(rate),
                    Err(e) => rows[i].problem = Some(format!("upload probe: {e:#}")),
                }
            }
        }
        Err(e) => progress::warn(&format!("upload rates not measured: {e:#}")),
    }
}

fn ok(r: &Row) -> bool {
    r.problem.is_none()
}

/// `--json`: one row per line.
fn emit_rows(rows: &[Row]) {
    for r in rows {
        progress::emit(&CheckRow {
            name: r.name.clone(),
            address: r.address.clone(),
            reachable: r.reachable,
            host_key: r.host_key,
            authenticated: r.auth,
            relayup: r.version.clone(),
            server_login: r.server_login,
            staging_free_bytes: r.free,
            upload_bytes_per_sec: r.rate.map(|v| v.round()),
            ok: ok(r),
            problem: r.problem.clone(),
            offers: r.offers.clone(),
            free_bytes: r.server_free,
        });
    }
}

fn human_rate(bytes_per_sec: f64) -> String {
    format!("{:.1} MB/s", bytes_per_sec / 1e6)
}

/// The table, then the upload rate of all hosts at once against this machine's
/// (the last row) alone.
fn print_table(rows: &[Row]) {
    let mark = |v: Option<bool>| match v {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "-",
    };
    // Only the upload row has offers: the column is as wide as its text.
    let offers = |r: &Row| r.offers.as_ref().map_or("-".into(), Offers::summary);
    let width = rows
        .iter()
        .map(|r| offers(r).len())
        .max()
        .unwrap_or(0)
        .max(6);
    println!(
        "{:<16} {:<32} {:<9} {:<8} {:<5} {:<16} {:<6} {:>10} {:>10} {:<width$} problem",
        "peer",
        "address",
        "reachable",
        "host key",
        "login",
        "relayup",
        "server",
        "free",
        "upload",
        "offers"
    );
    for r in rows {
        println!(
            "{:<16} {:<32} {:<9} {:<8} {:<5} {:<16} {:<6} {:>10} {:>10} {:<width$} {}",
            r.name,
            r.address,
            mark(r.reachable),
            mark(r.host_key),
            mark(r.auth),
            r.version.as_deref().unwrap_or("-"),
            mark(r.server_login),
            r.free
                .or(r.server_free)
                .map(crate::size::human)
                .unwrap_or_else(|| "-".into()),
            r.rate.map(human_rate).unwrap_or_else(|| "-".into()),
            offers(r),
            r.problem.as_deref().unwrap_or("")
        );
    }
    let total: f64 = rows.iter().filter_map(|r| r.rate).sum();
    if let Some(alone) = rows.last().and_then(|r| r.rate) {
        let hosts = rows.iter().filter(|r| r.rate.is_some()).count();
        println!(
            "upload rate, all {hosts} hosts at once: {} (this machine: {}; {:.1}x)",
            human_rate(total),
            human_rate(alone),
            total / alone
        );
    }
}

pub fn run(args: &crate::cli::CheckArgs) -> Result<ExitCode> {
    let (as_json, rates) = (args.json, !args.no_rate);
    let path =
        config::config_path(args.config.as_deref()).map_err(|e| with_code(e, Code::Usage))?;
    let mut settings = config::load(&path).map_err(|e| with_code(e, Code::Usage))?;
    settings.known_hosts.accept_new = args.accept_new_host_keys;
    let mut target = Target::new(&settings);
    let (upload, mut local) = check_upload(&settings, &mut target);
    let (mut rows, relays) = check_peers(&settings, &target);
    let merge = settings.merge.as_ref().map(|m| check_merge(&settings, m));
    let merge_ok = merge.as_ref().is_none_or(|m| m.problem.is_none());
    rows.extend(merge);
    rows.push(upload);
    if rates && merge_ok {
        let local = local.as_mut().map(|l| (rows.len() - 1, l));
        add_rates(&mut rows, target.measure_rates(&settings, local, relays));
    } else {
        relays.into_iter().for_each(|(_, relay)| relay.close());
    }
    if as_json {
        emit_rows(&rows);
    } else {
        print_table(&rows);
    }
    let failed = rows.iter().filter(|r| !ok(r)).count();
    if failed > 0 {
        return Err(anyhow!("{failed} of {} logins have a problem", rows.len()))
            .context(Code::Connect);
    }
    Ok(ExitCode::SUCCESS)
}
