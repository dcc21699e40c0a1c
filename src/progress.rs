//! The one progress façade, chosen once: bars on a TTY, a plain line every few seconds
//! otherwise, JSON lines on stdout with `--json`, only the result with `--no-progress`.
//! Human text always goes to stderr. This is the only file that imports indicatif, and
//! the only one that prints `--json` lines ([`emit`]); warnings from anywhere go
//! through [`warn`], so `--json` readers see them as events.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::events::{self, Event};
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
    /// A release's file of each part, shown with the part a host works on.
    part_files: std::sync::OnceLock<Vec<String>>,
}

/// The `--json` stream on stdout. Its first line is the command's own (`start`, `plan`
/// or `done` for a send, a row for the others), so a warning said before it — a host
/// key added in pre-flight, plain FTP — is held and printed right after it; a failed
/// command ends with `error`, after any warning still held.
struct Stream {
    /// A line other than a warning has been printed.
    begun: bool,
    held: Vec<String>,
}

impl Stream {
    const fn new() -> Stream {
        Stream {
            begun: false,
            held: Vec::new(),
        }
    }

    /// The lines to print for the command's own `line`.
    fn line(&mut self, line: String) -> Vec<String> {
        let mut lines = vec![line];
        if !self.begun {
            self.begun = true;
            lines.append(&mut self.held);
        }
        lines
    }

    /// The lines to print for a warning: none yet before the first line.
    fn warning(&mut self, line: String) -> Vec<String> {
        if self.begun {
            vec![line]
        } else {
            self.held.push(line);
            Vec::new()
        }
    }

    /// The lines to print for the error that ends the stream.
    fn error(&mut self, line: String) -> Vec<String> {
        self.begun = true;
        let mut lines = std::mem::take(&mut self.held);
        lines.push(line);
        lines
    }
}

static STREAM: Mutex<Stream> = Mutex::new(Stream::new());

/// Prints one line of the `--json` stream on stdout (with the warnings held for it),
/// whole and flushed at once: the only place that prints one, so lines from threads
/// never interleave.
pub fn emit(line: &impl Serialize) {
    let mut stream = STREAM.lock().unwrap_or_else(|e| e.into_inner());
    print_lines(&stream.line(to_json(line)));
}

/// A `warning` event: now, or after the stream's first line if none came yet.
fn emit_warning(msg: &str) {
    let line = to_json(&Event::Warning {
        message: msg.to_string(),
    });
    let mut stream = STREAM.lock().unwrap_or_else(|e| e.into_inner());
    print_lines(&stream.warning(line));
}

/// The `error` event that ends a failed command's stream (`error::report` prints the
/// message on stderr).
pub fn emit_error(message: &str, exit_code: u8) {
    let line = to_json(&Event::Error {
        message: message.to_string(),
        exit_code,
    });
    let mut stream = STREAM.lock().unwrap_or_else(|e| e.into_inner());
    print_lines(&stream.error(line));
}

fn to_json(line: &impl Serialize) -> String {
    serde_json::to_string(line).expect("events serialize to JSON")
}

fn print_lines(lines: &[String]) {
    let mut out = std::io::stdout().lock();
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    let _ = out.flush();
}

fn emit_event(event: Event) {
    emit(&event);
}

/// Whether this command speaks `--json`. Set once, from the command line, before the
/// command runs, and only read afterwards (like a logger): code that reports without a
/// [`Progress`] — pre-flight, an SSH login adding a host key — needs to know, and
/// threading it through every such call would reach into every module.
static JSON: OnceLock<bool> = OnceLock::new();

/// Chooses JSON lines (or not) for this process; the first call wins.
pub fn set_json(on: bool) {
    let _ = JSON.set(on);
}

/// Whether `--json` was given (see [`set_json`]).
pub fn json() -> bool {
    JSON.get().copied().unwrap_or(false)
}

/// The display running now, so a warning from code that holds no [`Progress`] is
/// printed above the bars instead of through them.
static SHOWN: Mutex<Weak<Progress>> = Mutex::new(Weak::new());

fn shown() -> Option<Arc<Progress>> {
    SHOWN.lock().unwrap_or_else(|e| e.into_inner()).upgrade()
}

/// A warning from anywhere: `relayup: warning: …` on stderr (above the bars while a
/// send shows them), and a `warning` event with `--json`.
pub fn warn(msg: &str) {
    let line = format!("relayup: warning: {msg}");
    match shown() {
        Some(p) => p.say(&line, Some(msg)),
        None => {
            if json() {
                emit_warning(msg);
            }
            eprintln!("{line}");
        }
    }
}

/// Information for people only (`relayup: …` on stderr, above the bars if shown).
pub fn note(msg: &str) {
    let line = format!("relayup: {msg}");
    match shown() {
        Some(p) => p.say(&line, None),
        None => eprintln!("{line}"),
    }
}

impl Progress {
    /// Starts reporting a send of `total` bytes by `hosts` (index = host number); with
    /// `--json`, `start` is the first event.
    pub fn start(mode: Mode, total: u64, hosts: &[String], start: events::Start) -> Arc<Progress> {
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
            part_files: std::sync::OnceLock::new(),
        });
        *SHOWN.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(&p);
        if mode == Mode::Json {
            emit_event(Event::Start(start));
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

    /// A display that shows nothing, with one host (`local`), for unit tests of the
    /// code that reports to one.
    #[cfg(test)]
    pub fn quiet() -> Arc<Progress> {
        let start = events::Start {
            file: String::new(),
            dest: String::new(),
            bytes: 0,
            parts: 0,
            hosts: Vec::new(),
            upload_id: String::new(),
            resumed_parts: 0,
            resumed_bytes: 0,
            strategy: crate::send::plan::Strategy::Adaptive,
        };
        Progress::start(Mode::Quiet, 0, &["local".to_string()], start)
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
                let hosts: BTreeMap<String, u64> = (0..s.hosts.len())
                    .map(|i| (s.hosts[i].name.clone(), Self::host_bytes(&s, i)))
                    .collect();
                emit_event(Event::Progress {
                    bytes: sent,
                    total: self.total,
                    seconds: round2(secs),
                    hosts,
                });
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
    /// Names each part's file in what the hosts' lines say (a release).
    pub fn name_parts(&self, files: Vec<String>) {
        let _ = self.part_files.set(files);
    }

    /// `part N`, with its file in a release.
    pub fn part_label(&self, index: usize) -> String {
        match self.part_files.get().and_then(|f| f.get(index)) {
            Some(file) => format!("part {index} ({file})"),
            None => format!("part {index}"),
        }
    }

    pub fn host_state(&self, host: usize, msg: &str) {
        if let Some(b) = &self.bars {
            b.hosts[host].set_message(msg.to_string());
        }
    }

    /// A message about the send for people (`relayup: …` on stderr), and a `warning`
    /// event with `--json`.
    pub fn warn(&self, msg: &str) {
        self.say(&format!("relayup: {msg}"), Some(msg));
    }

    /// `line` on stderr, above the bars if there are any; `warning` the event's message.
    fn say(&self, line: &str, warning: Option<&str>) {
        if let (Mode::Json, Some(msg)) = (self.mode, warning) {
            emit_warning(msg);
        }
        self.print(line);
    }

    fn print(&self, line: &str) {
        match &self.bars {
            Some(b) => b.total.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Every host fails against the server: said on stderr, and a
    /// `server_unreachable` event (seconds since the outage began) with `--json`.
    pub fn server_unreachable(&self, seconds: f64) {
        self.outage_note(
            Event::ServerUnreachable {
                seconds: round2(seconds),
            },
            &format!("server unreachable for {seconds:.0} s; retrying"),
        );
    }

    /// The server answers again after an announced outage (`server_back`).
    pub fn server_back(&self, seconds: f64) {
        self.outage_note(
            Event::ServerBack {
                seconds: round2(seconds),
            },
            &format!("server reachable again after {seconds:.0} s; going on at full speed"),
        );
    }

    fn outage_note(&self, event: Event, msg: &str) {
        if self.mode == Mode::Json {
            emit_event(event);
        }
        self.print(&format!("relayup: {msg}"));
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
            emit_event(Event::PartDone {
                part: index,
                host: s.hosts[host].name.clone(),
                bytes,
                xxh3: xxh3.to_string(),
                seconds: round2(self.start.elapsed().as_secs_f64()),
            });
        }
    }

    pub fn merged(&self, md5: &str, seconds_after_transfer: f64) {
        if self.mode == Mode::Json {
            emit_event(Event::Merged {
                md5: md5.to_string(),
                seconds: round2(self.start.elapsed().as_secs_f64()),
                merge_wait: round2(seconds_after_transfer),
            });
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
    verification: &str,
) {
    let rate = |b: u64| b as f64 / seconds.max(0.001) / 1e6;
    let verified = verification != "none";
    if mode == Mode::Json {
        let per = hosts
            .iter()
            .map(|h| {
                let rate = events::HostRate {
                    bytes: h.bytes,
                    mbps: round2(rate(h.bytes)),
                };
                (h.name.clone(), rate)
            })
            .collect();
        emit_event(Event::Done(events::Done {
            bytes: total,
            seconds: round2(seconds),
            md5: md5.to_string(),
            dest: dest.to_string(),
            verified,
            verification: verification.to_string(),
            already_there: false,
            mbps: round2(rate(total)),
            hosts: per,
        }));
    }
    let how = match verification {
        "server-md5" => "verified on the server".to_string(),
        "none" => "NOT verified (--verify none)".to_string(),
        other => format!("verified on the server ({other})"),
    };
    eprintln!(
        "relayup: {dest}: {} in {seconds:.1} s ({:.1} MB/s), md5 {md5} {how}",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn warnings_before_the_first_line_follow_it() {
        let mut s = Stream::new();
        assert!(s.warning("w1".into()).is_empty());
        assert!(s.warning("w2".into()).is_empty());
        assert_eq!(s.line("start".into()), lines(&["start", "w1", "w2"]));
        assert_eq!(s.warning("w3".into()), lines(&["w3"]));
        assert_eq!(s.line("done".into()), lines(&["done"]));
    }

    #[test]
    fn the_error_comes_last_even_before_any_line() {
        let mut s = Stream::new();
        assert!(s.warning("w1".into()).is_empty());
        assert_eq!(s.error("error".into()), lines(&["w1", "error"]));
        let mut s = Stream::new();
        assert_eq!(s.line("start".into()), lines(&["start"]));
        assert_eq!(s.error("error".into()), lines(&["error"]));
    }
}
