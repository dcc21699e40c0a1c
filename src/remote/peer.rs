//! The client's side of one LAN peer: an SSH session that runs `relayup relay`, stages
//! parts on the peer over SFTP, asks the relay to upload them, and follows its events.

use anyhow::{anyhow, bail, Context, Result};
use ssh2::{Channel, ExtendedData, Session, Sftp};
use std::collections::VecDeque;

use std::io::{BufReader, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::Peer;
use crate::remote::protocol::{self, Event, Hello, Request, ServerSpec, PROTOCOL};
use crate::remote::ssh::{self, Trust};
use crate::send::hashes::Hashes;
use crate::send::hosts::{Host, Report};
use crate::send::plan::Part;
use crate::send::source::{Places, Source};
use crate::transport::sftp::write_file;
use crate::transport::Body;
use crate::transport::Cancellable;

/// A part fails this many times on one peer before the peer is dropped.
const MAX_PART_FAILURES: usize = 3;

/// Lines that are not events (a relay's diagnostics) tolerated in a row.
const MAX_OTHER_LINES: usize = 1000;

pub struct PeerLink {
    pub peer: Peer,
    session: Session,
    wire: std::sync::Arc<ssh::Wire>,
    channel: Channel,
    events: BufReader<ssh2::Stream>,
    /// Started while the relay logs in to the server (see [`PeerLink::hello`]), or
    /// when first needed.
    sftp: Option<Sftp>,
    /// Absolute staging directory on the peer.
    pub staging: String,
    /// relayup version the peer runs.
    pub version: String,
    /// The platform that relayup was built for, as `uname -sm` spells it.
    pub platform: String,
    /// Free bytes in the staging directory, as the relay saw them at its start.
    pub staging_free: Option<u64>,
    /// The relay's last lines of stderr, for error messages.
    diag: VecDeque<String>,
    /// `--stall-timeout`, which the relay gets too.
    io_timeout: Duration,
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
    /// Nothing but the relay is run on the peer: each of
    /// [`Peer::relay_commands`](crate::config::Peer::relay_commands) in turn until
    /// one greets, whatever the login shell.
    pub fn connect(
        peer: &Peer,
        known_hosts: &crate::config::KnownHosts,
        io_timeout: Duration,
    ) -> Result<PeerLink> {
        let (session, wire) = ssh::connect_wired(
            &peer.login,
            Trust::KnownHosts(known_hosts),
            None,
            io_timeout,
        )?;
        let wire = std::sync::Arc::new(wire);
        let mut failed = None;
        for command in peer.relay_commands() {
            let mut channel = wire
                .settle(&session, || session.channel_session())
                .context("opening an SSH channel")?;
            // One stream for stdout and stderr: a relay's stderr can never fill its window.
            channel
                .handle_extended_data(ExtendedData::Merge)
                .context("merging the relay's stderr")?;
            wire.settle(&session, || channel.exec(&command))
                .context("starting relayup on the peer")?;
            let events = BufReader::new(channel.stream(0));
            let mut link = PeerLink {
                peer: peer.clone(),
                session: session.clone(),
                wire: wire.clone(),
                channel,
                events,
                sftp: None,
                staging: String::new(),
                version: String::new(),
                platform: String::new(),
                staging_free: None,
                io_timeout,
                last_sent: Instant::now(),
                diag: VecDeque::new(),
                staged: Vec::new(),
                limit: None,
            };
            match link.greet() {
                Ok(()) => return Ok(link),
                Err(e) => {
                    failed = Some(e);
                }
            }
        }
        let e = failed.expect("there is always a command to try");
        let hint = if format!("{e:#}").contains("first request must be hello") {
            "; it is an older relayup: run `relayup peers deploy` to install this one there"
        } else {
            ""
        };
        Err(anyhow!("{e:#}{hint}")).with_context(|| link_name(peer))
    }

    /// Has the relay remove every part staged for upload `upload_id` (by any run),
    /// then end; how many it removed. The relay does it, so this needs no shell.
    pub fn clean(mut self, upload_id: &str) -> Result<usize> {
        self.send(&Request::Clean {
            upload_id: upload_id.to_string(),
            staging: self.peer.staging.clone(),
        })?;
        let result = match self.next_event()? {
            Event::Cleaned { removed } => Ok(removed),
            Event::Error { message, .. } => Err(anyhow!("{message}")),
            other => Err(anyhow!("relay sent {other:?} instead of cleaned")),
        };
        let _ = self.channel.send_eof();
        let _ = self.channel.wait_close();
        result.with_context(|| link_name(&self.peer))
    }

    /// Waits for the relay's first line ([`Event::Relay`]). A ping goes first, which
    /// the relay lets pass and an older one refuses (its first request had to be
    /// `hello`); the server's password goes only to a relay that has greeted.
    fn greet(&mut self) -> Result<()> {
        self.send(&Request::Ping)?;
        match self.next_event()? {
            Event::Relay {
                version, platform, ..
            } => {
                self.version = version;
                self.platform = platform;
                Ok(())
            }
            Event::Error { message, .. } => Err(anyhow!("{message}")),
            other => bail!("relay sent {other:?} before its greeting"),
        }
    }

    /// Hands the relay the server and waits until it has logged in there.
    pub fn hello(&mut self, upload_id: &str, run: &str, server: ServerSpec) -> Result<()> {
        let link = self;
        link.limit = server.bwlimit;
        link.send(&Request::Hello(Hello {
            protocol: PROTOCOL,
            upload_id: upload_id.to_string(),
            run: run.to_string(),
            host: link.peer.login.name.clone(),
            server: Box::new(server),
            staging: link.peer.staging.clone(),
            stall_timeout: link.io_timeout.as_secs(),
        }))?;
        // SFTP starts (a subsystem process on the peer) while the relay logs in to
        // the server, not before the relay: a peer's first part waits for both.
        link.sftp()?;
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

    /// The SFTP session on the peer, started if it is not yet.
    fn sftp(&mut self) -> Result<&Sftp> {
        if self.sftp.is_none() {
            let sftp = self
                .wire
                .settle(&self.session, || self.session.sftp())
                .with_context(|| format!("{}: starting SFTP", link_name(&self.peer)))?;
            self.sftp = Some(sftp);
        }
        Ok(self.sftp.as_ref().expect("just started"))
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
                return Err(self.ended());
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

    /// The relay's output ended: how it ended (its exit status or signal, a hint when
    /// relayup is missing there) and its last lines of diagnostics.
    fn ended(&mut self) -> anyhow::Error {
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
        anyhow!(
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
        )
    }

    /// Copies the part's byte range to the peer's staging dir over SFTP.
    fn stage(&mut self, source: &Source, part: &Part, prefix: &str) -> Result<String> {
        let name = format!("{prefix}{}", part.file_name());
        let mut range = source.reader(part.offset, part.len)?;
        self.stage_reader(part.index, &name, &mut range, part.len)?;
        range.complete()?;
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
        let body = Body {
            src: &mut reader,
            len,
            pace: None,
            progress: &mut |_| {},
        };
        write_file(self.sftp()?, Path::new(&path), body)
            .with_context(|| format!("staging part {index} at {path}"))
    }

    /// Asks the relay to upload the staged file `file` as part `index`.
    pub fn request_upload(
        &mut self,
        index: usize,
        file: &str,
        size: u64,
        xxh3: &str,
        (into, offset): (Option<&str>, Option<u64>),
    ) -> Result<()> {
        self.send(&Request::Upload {
            index,
            file: file.to_string(),
            size,
            xxh3: xxh3.to_string(),
            offset,
            into: into.map(str::to_string),
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
        let Some(sftp) = &self.sftp else { return };
        for (_, path) in self.staged.drain(..) {
            if sftp.unlink(Path::new(&path)).is_err() {
                break;
            }
        }
    }
}

fn link_name(peer: &Peer) -> String {
    peer.login.describe()
}

/// A peer as a [`Host`] of the send: parts are staged over SFTP and uploaded by its
/// relay, which reports on them.
pub struct PeerHost<'a> {
    pub link: &'a mut PeerLink,
    pub source: &'a Source,
    /// Staged names start with this (`<upload id>-<run id>`).
    pub stage_prefix: &'a str,
    /// Where each part goes on the server.
    pub places: &'a Places,
}

impl Host for PeerHost<'_> {
    fn name(&self) -> &str {
        &self.link.peer.login.name
    }

    fn stages(&self) -> bool {
        true
    }

    fn max_part_failures(&self) -> usize {
        MAX_PART_FAILURES
    }

    fn begin(&mut self, part: &Part, hashes: &Hashes) -> Result<Option<String>> {
        let name = self.link.stage(self.source, part, self.stage_prefix)?;
        // Hashed by the one pass over the source, which staging has given time to get
        // there.
        let xxh3 = hashes.part(part.index)?;
        self.link.request_upload(
            part.index,
            &name,
            part.len,
            &xxh3,
            self.places.of(part.index),
        )?;
        Ok(Some(xxh3))
    }

    fn next_report(&mut self) -> Result<Report> {
        match self.link.next_event()? {
            Event::Progress { index, bytes } => Ok(Report::Progress { index, bytes }),
            Event::PartDone { index, bytes, xxh3 } => Ok(Report::Done {
                index,
                bytes,
                checksum: xxh3,
            }),
            Event::Error {
                index: Some(index),
                message,
                server,
            } => Ok(Report::Failed {
                index,
                message,
                server,
            }),
            Event::Error {
                index: None,
                message,
                ..
            } => Err(anyhow!("{message}")),
            Event::Ready { .. } | Event::Relay { .. } | Event::Cleaned { .. } => {
                Err(anyhow!("relay sent an event out of turn"))
            }
        }
    }

    fn tick(&mut self, limit: Option<u64>) -> Result<()> {
        self.link.keepalive()?;
        // Every round: between events (every 250 ms while the relay uploads), so a new
        // share reaches the relay mid-part, and before this peer takes a part, so the
        // relay has the share it starts with before its upload request.
        self.link.limit(limit)
    }

    fn forget(&mut self, index: usize) {
        self.link.unstaged(index);
    }
}
