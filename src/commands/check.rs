//! `relayup peers check`: can each peer take part, and does the merge login work?

use anyhow::{anyhow, bail, Context, Result};
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::config::{self, Login, Peer};
use crate::error::{with_code, Code};
use crate::events::CheckRow;
use crate::remote::peer::PeerLink;
use crate::remote::protocol::{Event, ServerSpec};
use crate::remote::quote;
use crate::remote::ssh::{self, Trust};
use crate::server::merge;
use crate::transport::Server;

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

/// Upload id of a check: its temp dir on the server only exists during the rate probe.
fn check_id() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    format!(
        "check{:08x}{:05x}",
        secs as u32,
        std::process::id() & 0xfffff
    )
}

/// Starts the peer's relay as a send would and has it log into the server; returns
/// the relay (kept for the rate probe) and the free space in its staging directory.
fn relay_probe(
    p: &Peer,
    known_hosts: &crate::config::KnownHosts,
    server: &ServerSpec,
    id: &str,
) -> Result<(PeerLink, u64)> {
    let mut link = PeerLink::connect(p, known_hosts, crate::config::DEFAULT_IO_TIMEOUT)?;
    match link
        .hello(id, &crate::send::lock::new_run_id(), server.clone())
        .and_then(|_| {
            link.staging_free.ok_or_else(|| {
                anyhow::anyhow!(
                    "the relay could not read the free space of {}",
                    link.staging
                )
            })
        }) {
        Ok(free) => Ok((link, free)),
        Err(e) => {
            link.close();
            Err(e)
        }
    }
}

fn probe(login: &Login, known_hosts: &crate::config::KnownHosts, command: Option<&str>) -> Row {
    let mut row = Row {
        name: login.name.clone(),
        address: format!("{}@{}:{}", login.user, login.host, login.port),
        ..Row::default()
    };
    let session = match ssh::connect(
        login,
        Trust::KnownHosts(known_hosts),
        None,
        crate::config::DEFAULT_IO_TIMEOUT,
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

/// The rate probe uploads for this long, or this many bytes, whichever comes first.
const PROBE_TIME: Duration = Duration::from_secs(4);
const PROBE_MAX: u64 = 32 << 20;
/// A probe cut short is measured from here on: the first second also fills socket
/// buffers and token buckets, which would read as upload speed (+20% on a 20 Mbit/s
/// link in the lab).
const PROBE_WARMUP: Duration = Duration::from_secs(1);

/// Probe bytes: one MiB of pseudo-random data, repeated (nothing on the way can
/// compress it much, and nothing has to be read from disk).
fn probe_block() -> &'static [u8] {
    static BLOCK: OnceLock<Vec<u8>> = OnceLock::new();
    BLOCK.get_or_init(|| {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..1 << 20)
            .map(|_| {
                // xorshift64*
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect()
    })
}

struct ProbeData {
    left: u64,
    pos: usize,
}

impl ProbeData {
    fn new(len: u64) -> ProbeData {
        ProbeData { left: len, pos: 0 }
    }
}

impl Read for ProbeData {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let block = probe_block();
        let n = buf
            .len()
            .min(block.len() - self.pos)
            .min(self.left as usize);
        buf[..n].copy_from_slice(&block[self.pos..self.pos + n]);
        self.pos = (self.pos + n) % block.len();
        self.left -= n as u64;
        Ok(n)
    }
}

/// Progress samples of one probe upload.
struct Meter {
    start: Instant,
    /// The first sample after [`PROBE_WARMUP`].
    warm: Option<(u64, f64)>,
    last: (u64, f64),
}

impl Meter {
    fn new() -> Meter {
        Meter {
            start: Instant::now(),
            warm: None,
            last: (0, 0.0),
        }
    }

    /// Records a sample; true once the probe has run long enough.
    fn sample(&mut self, bytes: u64) -> bool {
        let elapsed = self.start.elapsed();
        self.last = (bytes, elapsed.as_secs_f64());
        if elapsed >= PROBE_WARMUP && self.warm.is_none() {
            self.warm = Some(self.last);
        }
        elapsed >= PROBE_TIME
    }

    /// Bytes per second: of the whole upload if it completed (every byte confirmed by
    /// the server), else from the warm-up sample to the last one.
    fn rate(&self, completed: bool) -> Result<f64> {
        let (b0, t0) = match self.warm {
            Some(w) if !completed && self.last.1 > w.1 => w,
            _ => (0, 0.0),
        };
        let (b1, t1) = self.last;
        if b1 <= b0 || t1 <= t0 {
            bail!("the probe upload moved no byte");
        }
        Ok((b1 - b0) as f64 / (t1 - t0))
    }
}

/// This machine's upload rate: it uploads probe bytes for [`PROBE_TIME`].
fn local_rate(server: &mut Server) -> Result<f64> {
    let cancel = AtomicBool::new(false);
    let mut meter = Meter::new();
    let result = server.put_part(
        "0.part",
        PROBE_MAX,
        &mut || Ok(Box::new(ProbeData::new(PROBE_MAX)) as Box<dyn Read>),
        &mut |bytes| {
            if meter.sample(bytes) {
                cancel.store(true, Ordering::Relaxed);
            }
        },
        &cancel,
    );
    match result {
        // Stopped on purpose after PROBE_TIME.
        Err(_) if cancel.load(Ordering::Relaxed) => meter.rate(false),
        Err(e) => Err(e.context("probe upload")),
        Ok(_) => {
            meter.sample(PROBE_MAX);
            meter.rate(true)
        }
    }
}

/// A peer's upload rate: its relay uploads staged probe bytes; the rate is read from
/// its progress events.
fn peer_rate(mut link: PeerLink, id: &str) -> Result<f64> {
    let result = (|| {
        let name = format!("{id}-0.part");
        link.stage_reader(0, &name, &mut ProbeData::new(PROBE_MAX), PROBE_MAX)?;
        let sum = crate::send::hashes::checksum_of(&mut ProbeData::new(PROBE_MAX))?;
        let mut meter = Meter::new();
        link.request_upload(0, &name, PROBE_MAX, &sum)?;
        loop {
            match link.next_event()? {
                Event::Progress { bytes, .. } => {
                    if meter.sample(bytes) {
                        return meter.rate(false);
                    }
                }
                Event::PartDone { bytes, .. } => {
                    meter.sample(bytes);
                    return meter.rate(true);
                }
                Event::Error { message, .. } => bail!("{message}"),
                Event::Ready { .. } => {}
            }
        }
    })();
    // Closing stdin stops the relay's upload and removes its staged file.
    link.close();
    result
}

/// Every host uploads at once, as in a send (a server link that is the real limit
/// shows up), into a temp dir of its own that is removed afterwards.
fn measure_rates(
    settings: &config::Settings,
    local: Option<(usize, &mut Server)>,
    relays: Vec<(usize, PeerLink)>,
    id: &str,
) -> Result<Vec<(usize, Result<f64>)>> {
    let m = &settings.merge;
    let prepared = ssh::connect(
        &m.login,
        Trust::KnownHosts(&settings.known_hosts),
        None,
        settings.io_timeout,
    )
    .context("merge login")
    .and_then(|session| merge::create_temp(&session, &m.dir, id).map(|_| session));
    let session = match prepared {
        Ok(session) => session,
        Err(e) => {
            relays.into_iter().for_each(|(_, link)| link.close());
            return Err(e);
        }
    };
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = relays
            .into_iter()
            .map(|(i, link)| (i, s.spawn(move || peer_rate(link, id))))
            .collect();
        let mut results: Vec<_> = local.map(|(i, l)| (i, local_rate(l))).into_iter().collect();
        results.extend(
            handles
                .into_iter()
                .map(|(i, h)| (i, h.join().expect("probe does not panic"))),
        );
        results
    });
    // The uploads that were cut short may still be closing on the server: retry once.
    if merge::remove_temp(&session, &m.dir, id).is_err() {
        std::thread::sleep(Duration::from_millis(500));
        merge::remove_temp(&session, &m.dir, id).context(
            "removing the rate probe's temp dir (`relayup clean` cannot; remove it by hand)",
        )?;
    }
    Ok(results)
}

fn human_rate(bytes_per_sec: f64) -> String {
    format!("{:.1} MB/s", bytes_per_sec / 1e6)
}

pub fn run(
    config_path: Option<&Path>,
    as_json: bool,
    rates: bool,
    accept_new: bool,
) -> Result<ExitCode> {
    let path = config::config_path(config_path).map_err(|e| with_code(e, Code::Usage))?;
    let mut settings = config::load(&path).map_err(|e| with_code(e, Code::Usage))?;
    settings.known_hosts.accept_new = accept_new;
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
        ..Row::default()
    };
    let id = check_id();
    let id = id.as_str();
    let mut server = settings.server.clone();
    let mut local = None;
    match Server::connect(&settings.server, id, "local", settings.server_access()) {
        Ok((conn, key)) => {
            server.host_key = key;
            upload.server_login = Some(true);
            local = Some(conn);
        }
        Err(e) => {
            upload.server_login = Some(false);
            upload.problem = Some(format!("{e:#}"));
        }
    }
    let server = &server;
    // Each peer's relay stays up after its checks, for the rate probe.
    let mut relays: Vec<(usize, PeerLink)> = Vec::new();
    let mut rows: Vec<Row> = std::thread::scope(|s| {
        let handles: Vec<_> = settings
            .peers
            .iter()
            .map(|p| {
                let cmd = format!("{} --version", p.invocation());
                s.spawn(move || {
                    let mut row = probe(&p.login, kh, Some(&cmd));
                    let mut relay = None;
                    if row.problem.is_none() {
                        match relay_probe(p, kh, server, id) {
                            Ok((link, free)) => {
                                row.server_login = Some(true);
                                row.free = Some(free);
                                relay = Some(link);
                            }
                            Err(e) => {
                                row.server_login = Some(false);
                                row.problem = Some(format!("{e:#}"));
                            }
                        }
                    }
                    (row, relay)
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                let (row, relay) = h.join().expect("probe does not panic");
                relays.extend(relay.map(|link| (i, link)));
                row
            })
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
    let merge_ok = merge.problem.is_none();
    rows.push(merge);
    rows.push(upload);
    if !(rates && merge_ok) {
        relays.into_iter().for_each(|(_, link)| link.close());
    } else {
        let local = local.as_mut().map(|l| (rows.len() - 1, l));
        match measure_rates(&settings, local, relays, id) {
            Ok(results) => {
                for (i, r) in results {
                    match r {
                        Ok(rate) => rows[i].rate = Some(rate),
                        Err(e) => rows[i].problem = Some(format!("upload probe: {e:#}")),
                    }
                }
            }
            Err(e) => crate::progress::warn(&format!("upload rates not measured: {e:#}")),
        }
    }

    let ok = |r: &Row| r.problem.is_none();
    if as_json {
        for r in &rows {
            crate::progress::emit(&CheckRow {
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
            });
        }
    } else {
        let mark = |v: Option<bool>| match v {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        println!(
            "{:<16} {:<32} {:<9} {:<8} {:<5} {:<16} {:<6} {:>10} {:>10} problem",
            "peer",
            "address",
            "reachable",
            "host key",
            "login",
            "relayup",
            "server",
            "free",
            "upload"
        );
        for r in &rows {
            println!(
                "{:<16} {:<32} {:<9} {:<8} {:<5} {:<16} {:<6} {:>10} {:>10} {}",
                r.name,
                r.address,
                mark(r.reachable),
                mark(r.host_key),
                mark(r.auth),
                r.version.as_deref().unwrap_or("-"),
                mark(r.server_login),
                r.free.map(crate::size::human).unwrap_or_else(|| "-".into()),
                r.rate.map(human_rate).unwrap_or_else(|| "-".into()),
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
    let failed = rows.iter().filter(|r| !ok(r)).count();
    if failed > 0 {
        return Err(anyhow!("{failed} of {} logins have a problem", rows.len()))
            .context(Code::Connect);
    }
    Ok(ExitCode::SUCCESS)
}
