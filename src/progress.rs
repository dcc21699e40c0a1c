//! The one progress façade, chosen once: bars on a TTY, a plain line every few seconds
//! otherwise, JSON lines on stdout with `--json`, only the result with `--no-progress`.
//! Human text always goes to stderr. This is the only file that imports indicatif.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::size::human;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Bars,
    Plain,
    Json,
    Quiet,
}

impl Mode {
    pub fn choose(json: bool, no_progress: bool) -> Mode {
        if json {
            Mode::Json
        } else if no_progress {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Plain
        }
    }
}

const PLAIN_EVERY: Duration = Duration::from_secs(5);
const JSON_EVERY: Duration = Duration::from_secs(1);

struct Host {
    name: String,
    /// Bytes of parts this host finished.
    done: u64,
}

struct State {
    hosts: Vec<Host>,
    /// In-flight parts: index -> (host, bytes so far).
    parts: HashMap<usize, (usize, u64)>,
}

struct Bars {
    _multi: MultiProgress,
    hosts: Vec<ProgressBar>,
    total: ProgressBar,
}

/// Per-host figures in the final report.
pub struct HostSummary {
    pub name: String,
    pub bytes: u64,
}

pub struct Progress {
    mode: Mode,
    total: u64,
    start: Instant,
    state: Mutex<State>,
    bars: Option<Bars>,
    stop: Arc<AtomicBool>,
}

fn emit_json(v: Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

impl Progress {
    /// Starts reporting a send of `total` bytes by `hosts` (index = host number).
    pub fn start(mode: Mode, total: u64, hosts: &[String], start_event: Value) -> Arc<Progress> {
        let bars = (mode == Mode::Bars).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
            // Colour only on a terminal (Bars mode) and never with NO_COLOR.
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            let prefix = if no_color { "{prefix:>12}" } else { "{prefix:>12.bold}" };
            let host_style = ProgressStyle::with_template(&format!(
                "{prefix} {{spinner}} {{bytes:>11}} {{decimal_bytes_per_sec:>11}}  {{wide_msg}}"
            ))
            .expect("valid template");
            let total_style = ProgressStyle::with_template(&format!(
                "{prefix} [{{wide_bar}}] {{bytes}}/{{total_bytes}} {{decimal_bytes_per_sec}} ETA {{eta}}"
            ))
            .expect("valid template")
            .progress_chars("=> ");
            let hosts = hosts
                .iter()
                .map(|h| {
                    let b = multi.add(ProgressBar::no_length().with_style(host_style.clone()));
                    b.set_prefix(h.clone());
                    b.set_message("starting");
                    b.enable_steady_tick(Duration::from_millis(250));
                    b
                })
                .collect();
            let total_bar = multi.add(ProgressBar::new(total).with_style(total_style));
            total_bar.set_prefix("total");
            Bars {
                _multi: multi,
                hosts,
                total: total_bar,
            }
        });
        let p = Arc::new(Progress {
            mode,
            total,
            start: Instant::now(),
            state: Mutex::new(State {
                hosts: hosts
                    .iter()
                    .map(|h| Host {
                        name: h.clone(),
                        done: 0,
                    })
                    .collect(),
                parts: HashMap::new(),
            }),
            bars,
            stop: Arc::new(AtomicBool::new(false)),
        });
        if mode == Mode::Json {
            emit_json(start_event);
        }
        if matches!(mode, Mode::Plain | Mode::Json) {
            let weak = Arc::downgrade(&p);
            let stop = p.stop.clone();
            std::thread::spawn(move || {
                let every = if mode == Mode::Json {
                    JSON_EVERY
                } else {
                    PLAIN_EVERY
                };
                let mut next = Instant::now() + every;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if Instant::now() >= next {
                        next += every;
                        match weak.upgrade() {
                            Some(p) => p.tick(),
                            None => break,
                        }
                    }
                }
            });
        }
        p
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn host_bytes(s: &State, host: usize) -> u64 {
        s.hosts[host].done
            + s.parts
                .values()
                .filter(|(h, _)| *h == host)
                .map(|(_, b)| b)
                .sum::<u64>()
    }

    fn sent(s: &State) -> u64 {
        s.hosts.iter().map(|h| h.done).sum::<u64>() + s.parts.values().map(|(_, b)| b).sum::<u64>()
    }

    fn tick(&self) {
        let s = self.lock();
        let sent = Self::sent(&s);
        let secs = self.start.elapsed().as_secs_f64();
        match self.mode {
            Mode::Json => {
                let hosts: serde_json::Map<String, Value> = (0..s.hosts.len())
                    .map(|i| (s.hosts[i].name.clone(), json!(Self::host_bytes(&s, i))))
                    .collect();
                emit_json(
                    json!({"type": "progress", "bytes": sent, "total": self.total,
                    "seconds": round2(secs), "hosts": hosts}),
                );
            }
            Mode::Plain => {
                let pct = if self.total == 0 {
                    100.0
                } else {
                    sent as f64 * 100.0 / self.total as f64
                };
                let hosts: Vec<String> = (0..s.hosts.len())
                    .map(|i| format!("{} {}", s.hosts[i].name, human(Self::host_bytes(&s, i))))
                    .collect();
                eprintln!(
                    "relayup: {} / {} ({pct:.0}%), {:.1} MB/s; {}",
                    human(sent),
                    human(self.total),
                    sent as f64 / secs.max(0.001) / 1e6,
                    hosts.join(", ")
                );
            }
            _ => {}
        }
    }

    fn refresh_bars(&self, s: &State, host: usize) {
        if let Some(b) = &self.bars {
            b.hosts[host].set_position(Self::host_bytes(s, host));
            b.total.set_position(Self::sent(s));
        }
    }

    /// A host's state in words (`uploading part 3`, `dropped: …`).
    pub fn host_state(&self, host: usize, msg: &str) {
        if let Some(b) = &self.bars {
            b.hosts[host].set_message(msg.to_string());
        }
    }

    /// A message for people (stderr), or a `warning` event with `--json`.
    pub fn warn(&self, msg: &str) {
        match (&self.bars, self.mode) {
            (Some(b), _) => b.total.suspend(|| eprintln!("relayup: {msg}")),
            (None, Mode::Json) => {
                emit_json(json!({"type": "warning", "message": msg}));
                eprintln!("relayup: {msg}");
            }
            _ => eprintln!("relayup: {msg}"),
        }
    }

    /// Every host fails against the server: said on stderr, and a
    /// `server_unreachable` event (seconds since the outage began) with `--json`.
    pub fn server_unreachable(&self, seconds: f64) {
        self.outage_note(
            json!({"type": "server_unreachable", "seconds": round2(seconds)}),
            &format!("server unreachable for {seconds:.0} s; retrying"),
        );
    }

    /// The server answers again after an announced outage (`server_back`).
    pub fn server_back(&self, seconds: f64) {
        self.outage_note(
            json!({"type": "server_back", "seconds": round2(seconds)}),
            &format!("server reachable again after {seconds:.0} s; going on at full speed"),
        );
    }

    fn outage_note(&self, event: Value, msg: &str) {
        if self.mode == Mode::Json {
            emit_json(event);
        }
        match &self.bars {
            Some(b) => b.total.suspend(|| eprintln!("relayup: {msg}")),
            None => eprintln!("relayup: {msg}"),
        }
    }

    pub fn part_progress(&self, host: usize, index: usize, bytes: u64) {
        let mut s = self.lock();
        s.parts.insert(index, (host, bytes));
        self.refresh_bars(&s, host);
    }

    /// The part will be sent again, maybe by another host: forget its bytes.
    pub fn part_failed(&self, index: usize) {
        let mut s = self.lock();
        if let Some((host, _)) = s.parts.remove(&index) {
            self.refresh_bars(&s, host);
        }
    }

    pub fn part_done(&self, host: usize, index: usize, bytes: u64, xxh3: &str) {
        let mut s = self.lock();
        s.parts.remove(&index);
        s.hosts[host].done += bytes;
        self.refresh_bars(&s, host);
        if self.mode == Mode::Json {
            emit_json(
                json!({"type": "part_done", "part": index, "host": s.hosts[host].name,
                "bytes": bytes, "xxh3": xxh3, "seconds": round2(self.start.elapsed().as_secs_f64())}),
            );
        }
    }

    pub fn merged(&self, md5: &str, seconds_after_transfer: f64) {
        if self.mode == Mode::Json {
            emit_json(
                json!({"type": "merged", "md5": md5, "seconds": round2(self.start.elapsed().as_secs_f64()),
                "merge_wait": round2(seconds_after_transfer)}),
            );
        }
    }

    /// Stops the display; returns per-host bytes and the elapsed seconds.
    pub fn stop(&self) -> (Vec<HostSummary>, f64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(b) = &self.bars {
            for h in &b.hosts {
                h.finish_and_clear();
            }
            b.total.finish_and_clear();
        }
        let s = self.lock();
        let hosts = (0..s.hosts.len())
            .map(|i| HostSummary {
                name: s.hosts[i].name.clone(),
                bytes: s.hosts[i].done,
            })
            .collect();
        (hosts, self.start.elapsed().as_secs_f64())
    }
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Prints the final report: a `done` event with `--json`, lines on stderr otherwise.
pub fn report_done(
    mode: Mode,
    total: u64,
    seconds: f64,
    md5: &str,
    dest: &str,
    hosts: &[HostSummary],
) {
    let rate = |b: u64| b as f64 / seconds.max(0.001) / 1e6;
    if mode == Mode::Json {
        let per: serde_json::Map<String, Value> = hosts
            .iter()
            .map(|h| {
                (
                    h.name.clone(),
                    json!({"bytes": h.bytes, "mbps": round2(rate(h.bytes))}),
                )
            })
            .collect();
        emit_json(
            json!({"type": "done", "bytes": total, "seconds": round2(seconds), "md5": md5,
            "dest": dest, "verified": true, "mbps": round2(rate(total)), "hosts": per}),
        );
    }
    eprintln!(
        "relayup: {dest}: {} in {seconds:.1} s ({:.1} MB/s), md5 {md5} verified on the server",
        human(total),
        rate(total)
    );
    if mode != Mode::Json {
        for h in hosts {
            eprintln!(
                "  {:>12}  {:>11}  {:>7.1} MB/s",
                h.name,
                human(h.bytes),
                rate(h.bytes)
            );
        }
    }
}
