//! The client's side of one LAN peer: an SSH session that runs `relayup relay`, stages
//! parts on the peer over SFTP, asks the relay to upload them, and follows its events.

use anyhow::{anyhow, bail, Context, Result};
use ssh2::{Channel, ExtendedData, Session, Sftp};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::Peer;
use crate::health::{Health, Verdict};
use crate::plan::Part;
use crate::progress::Progress;
use crate::protocol::{self, Event, Request, ServerSpec, PROTOCOL};
use crate::quote;
use crate::schedule::{Next, Scheduler};
use crate::ssh::{self, Trust};
use crate::transport::sftp::write_file;
use crate::transport::Cancellable;

/// A part fails this many times on one peer before the peer is dropped.
const MAX_PART_FAILURES: usize = 3;

/// Lines that are not events (a relay's diagnostics) tolerated in a row.
const MAX_OTHER_LINES: usize = 1000;

pub struct PeerLink {
    pub peer: Peer,
    session: Session,
    channel: Channel,
    events: BufReader<ssh2::Stream>,
    sftp: Sftp,
    /// Absolute staging directory on the peer.
    pub staging: String,
    /// relayup version the peer runs.
    pub version: String,
    /// Free bytes in the staging directory, as the relay saw them at its start.
    pub staging_free: Option<u64>,
    /// The relay's last lines of stderr, for error messages.
    diag: VecDeque<String>,
    /// When the last request went to the relay (see [`PeerLink::keepalive`]).
    last_sent: Instant,
    /// Staged files the relay has not yet removed (by part index), removed by `close`
    /// if the relay could not.
    staged: Vec<(usize, String)>,
    /// The upload rate limit the relay follows, bytes per second.
    limit: Option<u64>,
}

impl PeerLink {
    /// Logs in and starts the relay; [`PeerLink::hello`] then hands it the server.
    pub fn connect(peer: &Peer, known_hosts: &Path) -> Result<PeerLink> {
        let session = ssh::connect(&peer.login, Trust::KnownHosts(known_hosts), None)?;
        let mut channel = session
            .channel_session()
            .context("opening an SSH channel")?;
        // One stream for stdout and stderr: a relay's stderr can never fill its window.
        channel
            .handle_extended_data(ExtendedData::Merge)
            .context("merging the relay's stderr")?;
        let script = format!("exec {} relay", peer.invocation());
        channel
            .exec(&format!("sh -c {}", quote::sh(&script)))
            .context("starting relayup on the peer")?;
        let events = BufReader::new(channel.stream(0));
        let sftp = session.sftp().context("starting SFTP on the peer")?;
        Ok(PeerLink {
            peer: peer.clone(),
            session,
            channel,
            events,
            sftp,
            staging: String::new(),
            version: String::new(),
            staging_free: None,
            last_sent: Instant::now(),
            diag: VecDeque::new(),
            staged: Vec::new(),
            limit: None,
        })
    }

    /// Hands the relay the server and waits until it has logged in there.
    pub fn hello(&mut self, upload_id: &str, run: &str, server: ServerSpec) -> Result<()> {
        let link = self;
        link.limit = server.bwlimit;
        link.send(&Request::Hello {
            protocol: PROTOCOL,
            upload_id: upload_id.to_string(),
            run: run.to_string(),
            host: link.peer.login.name.clone(),
            server: Box::new(server),
            staging: link.peer.staging.clone(),
            stall_timeout: ssh::io_timeout().as_secs(),
        })?;
        match link.next_event()? {
            Event::Ready {
                version,
                protocol,
                staging,
                staging_free,
            } => {
                if protocol != PROTOCOL {
                    bail!(
                        "relayup {version} there speaks protocol {protocol}, this relayup {} speaks {PROTOCOL}; run `relayup peers deploy` to install this version there",
                        env!("CARGO_PKG_VERSION")
                    );
                }
                link.version = version;
                link.staging = staging;
                link.staging_free = staging_free;
                Ok(())
            }
            Event::Error { message, .. } => Err(anyhow!("{message}")),
            other => bail!("relay sent {other:?} before ready"),
        }
        .with_context(|| link_name(&link.peer))
    }

    // No flush(): on an ssh2 channel it discards unread *incoming* data
    // (libssh2_channel_flush_ex), and write_all has already sent everything.
    fn send(&mut self, req: &Request) -> Result<()> {
        self.last_sent = Instant::now();
        self.channel
            .write_all(protocol::to_line(req).as_bytes())
            .with_context(|| format!("{}: the relay stopped reading", link_name(&self.peer)))
    }

    /// Pings the relay if nothing was sent to it for [`protocol::PING_EVERY`]: a relay
    /// that hears nothing for its idle limit gives up on this client.
    pub fn keepalive(&mut self) -> Result<()> {
        if self.last_sent.elapsed() >= protocol::PING_EVERY {
            self.send(&Request::Ping)?;
        }
        Ok(())
    }

    /// The next event from the relay; its non-JSON output is kept for error messages.
    /// A relay that sends nothing but other lines is not believed forever.
    pub fn next_event(&mut self) -> Result<Event> {
        for _ in 0..MAX_OTHER_LINES {
            let line = protocol::read_line(&mut self.events)
                .with_context(|| format!("{}: reading relay events", link_name(&self.peer)))?;
            let Some(line) = line else {
                let _ = self.channel.wait_close();
                let status = self.channel.exit_status().unwrap_or(-1);
                let signal = ssh::exit_signal(&self.channel);
                let diag: Vec<_> = self.diag.iter().cloned().collect();
                let hint = if status == 127 {
                    format!(
                        "; relayup was not found there: run `relayup peers deploy` to install this relayup on it, or set `relayup = \"/path/to/relayup\"` for peer {:?}",
                        self.peer.login.name
                    )
                } else {
                    String::new()
                };
                bail!(
                    "relay {}{}{hint}",
                    match signal {
                        // Its exit status reads 0 then: never report that as an exit.
                        Some(sig) => format!("was killed by signal {sig}"),
                        None => format!("exited (status {status})"),
                    },
                    if diag.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", diag.join(" | "))
                    }
                );
            };
            if line.starts_with('{') {
                return protocol::parse_event(&line);
            }
            if self.diag.len() == 5 {
                self.diag.pop_front();
            }
            self.diag.push_back(line.chars().take(200).collect());
        }
        bail!(
            "{}: the relay sent {MAX_OTHER_LINES} lines in a row that are not events (last: {})",
            link_name(&self.peer),
            self.diag.back().map(String::as_str).unwrap_or_default()
        )
    }

    /// Copies the part's byte range to the peer's staging dir over SFTP.
    fn stage(&mut self, source: &Path, part: &Part, prefix: &str) -> Result<String> {
        let name = format!("{prefix}-{}", part.file_name());
        let mut file =
            File::open(source).with_context(|| format!("opening {}", source.display()))?;
        file.seek(SeekFrom::Start(part.offset))?;
        self.stage_reader(part.index, &name, &mut file.take(part.len), part.len)?;
        Ok(name)
    }

    /// Writes `len` bytes from `src` to `name` in the staging dir, as part `index`.
    pub fn stage_reader(
        &mut self,
        index: usize,
        name: &str,
        src: &mut dyn Read,
        len: u64,
    ) -> Result<()> {
        let path = format!("{}/{name}", self.staging);
        self.staged.push((index, path.clone()));
        let mut reader = Cancellable {
            inner: src,
            cancel: crate::interrupt::flag(),
        };
        write_file(
            &self.sftp,
            Path::new(&path),
            &mut reader,
            len,
            None,
            &mut |_| {},
        )
        .with_context(|| format!("staging part {index} at {path}"))
    }

    /// Asks the relay to upload the staged file `file` as part `index`.
    pub fn request_upload(
        &mut self,
        index: usize,
        file: &str,
        size: u64,
        xxh3: &str,
    ) -> Result<()> {
        self.send(&Request::Upload {
            index,
            file: file.to_string(),
            size,
            xxh3: xxh3.to_string(),
        })
    }

    /// Tells the relay its new upload rate limit if `rate` is one it does not have yet
    /// (its share of `--bwlimit-total` changed); it applies from its next write on.
    pub fn limit(&mut self, rate: Option<u64>) -> Result<()> {
        match rate {
            Some(bytes_per_sec) if rate != self.limit => {
                self.send(&Request::Limit { bytes_per_sec })?;
                self.limit = rate;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The relay is done with part `index` (uploaded, or failed and deleted).
    fn unstaged(&mut self, index: usize) {
        self.staged.retain(|(i, _)| *i != index);
    }

    /// Ends the relay: closing its stdin makes it remove what it staged and exit. If
    /// it died instead, remove what it left over SFTP.
    pub fn close(mut self) {
        // A peer that just failed may be unreachable: each step gets a short timeout,
        // and the first one that fails ends the cleanup (`relayup clean` can finish it).
        self.session.set_timeout(2_000);
        let _ = self.send(&Request::Bye);
        if self.channel.send_eof().is_err() {
            return;
        }
        // Bounded: a relay that never stops talking must not hold the client here.
        let mut rest = Vec::new();
        if (&mut self.events)
            .take(1 << 20)
            .read_to_end(&mut rest)
            .is_err()
        {
            return;
        }
        let _ = self.channel.wait_close();
        for (_, path) in self.staged.drain(..) {
            if self.sftp.unlink(Path::new(&path)).is_err() {
                break;
            }
        }
    }
}

fn link_name(peer: &Peer) -> String {
    peer.login.describe()
}

struct InFlight {
    part: Part,
    /// When the upload request went to the relay.
    sent: Instant,
    xxh3: String,
    bytes: u64,
    failures: usize,
}

/// What a peer's worker needs from the send.
pub struct Job<'a> {
    pub host: usize,
    pub source: &'a Path,
    /// Staged names start with this (`<upload id>-<run id>`).
    pub stage_prefix: &'a str,
    pub sched: &'a Scheduler,
    pub progress: &'a Progress,
    /// Receives the index of every part that is complete on the server.
    pub merged: &'a std::sync::mpsc::Sender<usize>,
    /// Every part's checksum, from one pass over the source.
    pub hashes: &'a crate::hashes::Hashes,
    /// Whether a failing host fails alone or the server is away.
    pub health: &'a Health,
}

/// Runs one peer until no part is left for it. On error, returns the parts it held
/// so they can go to other hosts.
pub fn drive(
    link: &mut PeerLink,
    job: &Job<'_>,
) -> std::result::Result<(), (anyhow::Error, Vec<Part>)> {
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    let mut failures = std::collections::HashMap::<usize, usize>::new();
    let mut stage_secs = 0.0f64;
    let mut uploaded = 0u64;
    let mut upload_secs = 0.0f64;
    let mut last_event = Instant::now();
    // The relay uploads one part at a time: a part's upload starts when it was
    // requested or when the one before it finished, whichever is later.
    let mut last_done = Instant::now();
    let fail = |e: anyhow::Error, inflight: &VecDeque<InFlight>| {
        Err((e, inflight.iter().map(|f| f.part).collect()))
    };

    // When a byte last moved (or the relay last had nothing to do): a relay that keeps
    // talking without moving a byte is stalled all the same.
    let mut last_move = Instant::now();
    // When this peer's last upload to the server failed (no success since), and until
    // when it pauses because the server seems away.
    let mut failed: Option<Instant> = None;
    let mut pause_until = Instant::now();
    loop {
        if let Err(e) = link.keepalive() {
            return fail(e, &inflight);
        }
        if inflight.is_empty() {
            last_move = Instant::now();
        } else if last_move.elapsed() > ssh::io_timeout() {
            return fail(
                anyhow!(
                    "{}: no byte moved for {} s (--stall-timeout)",
                    link_name(&link.peer),
                    ssh::io_timeout().as_secs()
                ),
                &inflight,
            );
        }
        // Every round: between events (every 250 ms while the relay uploads), so a new
        // share reaches the relay mid-part, and before this peer takes a part, so the
        // relay has the share it starts with before its upload request.
        if let Err(e) = link.limit(job.sched.pace(job.host).get()) {
            return fail(e, &inflight);
        }
        // Stage the next part while the relay uploads the current one, just early
        // enough that its uplink never waits, and no earlier (a part taken too early
        // is a part a faster host could have sent).
        let want_next = match inflight.front() {
            None => true,
            Some(f) if inflight.len() == 1 => {
                let rate = if upload_secs > 0.5 {
                    uploaded as f64 / upload_secs
                } else {
                    0.0
                };
                let left = (f.part.len - f.bytes) as f64;
                // Early enough to stage and verify it, no earlier: a slow host that
                // takes a part too soon holds it while faster hosts run out of work.
                // Before the rate is known (the first half second), stage at once:
                // the start is when uplinks would otherwise wait.
                rate == 0.0 || left / rate <= stage_secs * 2.0 + 0.3
            }
            Some(_) => false,
        };
        if want_next && Instant::now() < pause_until {
            if inflight.is_empty() {
                job.health.pause(
                    pause_until
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(200)),
                );
                if job.health.is_up_since(failed) {
                    pause_until = Instant::now();
                }
                continue;
            }
        } else if want_next {
            match job.sched.next(job.host) {
                Next::Part(part) => {
                    job.progress
                        .host_state(job.host, &format!("staging part {}", part.index));
                    let t = Instant::now();
                    let staged = link
                        .stage(job.source, &part, job.stage_prefix)
                        .and_then(|name| Ok((name, job.hashes.part(part.index)?)));
                    let (name, xxh3) = match staged {
                        Ok(v) => v,
                        Err(e) => {
                            inflight.push_back(InFlight {
                                part,
                                sent: Instant::now(),
                                xxh3: String::new(),
                                bytes: 0,
                                failures: 0,
                            });
                            return fail(e, &inflight);
                        }
                    };
                    stage_secs = t.elapsed().as_secs_f64();
                    last_move = Instant::now();
                    let sent = link.request_upload(part.index, &name, part.len, &xxh3);
                    inflight.push_back(InFlight {
                        part,
                        sent: Instant::now(),
                        xxh3,
                        bytes: 0,
                        failures: 0,
                    });
                    if let Err(e) = sent {
                        return fail(e, &inflight);
                    }
                    job.progress.host_state(
                        job.host,
                        &format!("uploading part {}", inflight[0].part.index),
                    );
                    continue;
                }
                Next::Finished if inflight.is_empty() => {
                    job.progress.host_state(job.host, "done");
                    return Ok(());
                }
                Next::Wait if inflight.is_empty() => {
                    job.progress.host_state(job.host, "idle");
                    job.sched.wait(Duration::from_millis(200));
                    continue;
                }
                _ => {}
            }
        }
        let ev = match link.next_event() {
            Ok(ev) => ev,
            Err(e) => return fail(e, &inflight),
        };
        let now = Instant::now();
        let dt = now.duration_since(last_event).as_secs_f64();
        last_event = now;
        match ev {
            Event::Progress { index, bytes } => {
                if let Some(f) = inflight.iter_mut().find(|f| f.part.index == index) {
                    // A relay's count is a claim: never more than the part.
                    let bytes = bytes.min(f.part.len);
                    if bytes > f.bytes {
                        last_move = now;
                    }
                    uploaded += bytes.saturating_sub(f.bytes);
                    upload_secs += dt;
                    f.bytes = bytes;
                    job.progress.part_progress(job.host, index, bytes);
                }
            }
            Event::PartDone { index, bytes, xxh3 } => {
                let Some(pos) = inflight.iter().position(|f| f.part.index == index) else {
                    return fail(
                        anyhow!("relay reported part {index}, which it was not given"),
                        &inflight,
                    );
                };
                let f = inflight.remove(pos).expect("position is valid");
                link.unstaged(index);
                if xxh3 != f.xxh3 || bytes != f.part.len {
                    inflight.push_back(f);
                    return fail(
                        anyhow!(
                            "relay uploaded part {index} with checksum {xxh3}, the staged one was different"
                        ),
                        &inflight,
                    );
                }
                uploaded += bytes.saturating_sub(f.bytes);
                upload_secs += dt;
                last_move = now;
                failed = None;
                job.health.success(job.progress);
                let began = f.sent.max(last_done);
                last_done = Instant::now();
                job.sched
                    .complete(&f.part, job.host, began.elapsed().as_secs_f64());
                job.progress.part_done(job.host, index, bytes, &xxh3);
                let _ = job.merged.send(index);
                if let Some(next) = inflight.front() {
                    job.progress
                        .host_state(job.host, &format!("uploading part {}", next.part.index));
                }
            }
            Event::Error {
                index: Some(index),
                message,
                server,
            } => {
                let Some(pos) = inflight.iter().position(|f| f.part.index == index) else {
                    return fail(
                        anyhow!("relay error for unknown part {index}: {message}"),
                        &inflight,
                    );
                };
                let f = inflight.remove(pos).expect("position is valid");
                link.unstaged(index);
                if server && !crate::interrupt::interrupted() {
                    match job.health.failure(failed, job.progress) {
                        Verdict::Retry(pause) => {
                            // The server may be away: keep this peer, try again later.
                            failed = Some(Instant::now());
                            pause_until = Instant::now() + pause;
                            last_move = Instant::now() + pause;
                            job.progress.part_failed(index);
                            job.progress.host_state(job.host, "waiting for the server");
                            job.sched.give_back(&[f.part]);
                            continue;
                        }
                        Verdict::GiveUp(away) => {
                            inflight.push_back(f);
                            return fail(
                                anyhow!(
                                    "{message}; the server has been unreachable for {} s (--retry-for)",
                                    away.as_secs()
                                ),
                                &inflight,
                            );
                        }
                        Verdict::Alone => {}
                    }
                }
                let n = failures.entry(index).or_default();
                *n += 1;
                job.progress.part_failed(index);
                if *n + f.failures >= MAX_PART_FAILURES {
                    inflight.push_back(f);
                    return fail(
                        anyhow!("part {index} failed {MAX_PART_FAILURES} times: {message}"),
                        &inflight,
                    );
                }
                job.progress.warn(&format!(
                    "{}: part {index}: {message}; sending it again",
                    link.peer.login.name
                ));
                job.sched.give_back(&[f.part]);
            }
            Event::Error {
                index: None,
                message,
                ..
            } => return fail(anyhow!("{message}"), &inflight),
            Event::Ready { .. } => return fail(anyhow!("relay sent ready twice"), &inflight),
        }
    }
}
