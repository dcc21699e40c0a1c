//! `relayup peers check`'s probes of the data path, as a send uses it: this machine's
//! server login, each peer's relay logging into the server, and the upload rates of
//! all hosts at once. `check.rs` turns their outcomes into rows.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::config::{KnownHosts, Peer, Settings, DEFAULT_IO_TIMEOUT};
use crate::remote::peer::PeerLink;
use crate::remote::protocol::{Event, ServerSpec};
use crate::send::hashes;
use crate::send::lock;
use crate::server::direct;
use crate::transport::Server;

/// What every data-path probe of one check shares: its upload id, and the server as
/// the relays reach it.
pub struct Target {
    id: String,
    server: ServerSpec,
}

/// This machine's connection to the server, kept for the rate probe.
pub struct Uplink(Server);

impl Uplink {
    /// What the server offers, as this login read it.
    pub fn offers(&self) -> &crate::transport::Offers {
        self.0.offers()
    }

    /// Free bytes in the upload directory, where the server tells (SFTP).
    pub fn free(&mut self) -> Option<u64> {
        self.0.free()
    }
}

/// A peer's relay, logged into the server as for a send; kept up for the rate probe.
pub struct Relay {
    pub(super) link: PeerLink,
    /// Free space in the peer's staging directory, bytes.
    pub free: u64,
}

impl Relay {
    /// Closing stdin stops the relay and removes what it staged.
    pub fn close(self) {
        self.link.close();
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

impl Target {
    pub fn new(settings: &Settings) -> Target {
        Target {
            id: check_id(),
            server: settings.server.clone(),
        }
    }

    /// This machine's own server login, which also yields the sftp host key relays need.
    pub fn login(&mut self, settings: &Settings) -> Result<Uplink> {
        let (conn, key) = Server::connect(
            &settings.server,
            &self.id,
            "local",
            crate::transport::Access::of(settings),
        )?;
        self.server.host_key = key;
        Ok(Uplink(conn))
    }

    /// Starts the peer's relay as a send would and has it log into the server; returns
    /// the relay (kept for the rate probe) with the free space in its staging directory.
    pub fn relay(&self, p: &Peer, known_hosts: &KnownHosts) -> Result<Relay> {
        let mut link = PeerLink::connect(p, known_hosts, DEFAULT_IO_TIMEOUT)?;
        match link
            .hello(&self.id, &lock::new_run_id(), self.server.clone())
            .and_then(|_| {
                link.staging_free.ok_or_else(|| {
                    anyhow::anyhow!(
                        "the relay could not read the free space of {}",
                        link.staging
                    )
                })
            }) {
            Ok(free) => Ok(Relay { link, free }),
            Err(e) => {
                link.close();
                Err(e)
            }
        }
    }

    /// Every host uploads at once, as in a send (a server link that is the real limit
    /// shows up), into a temp dir of its own that is removed afterwards. `local` and
    /// `relays` carry the row index each rate belongs to.
    pub fn measure_rates(
        &self,
        settings: &Settings,
        local: Option<(usize, &mut Uplink)>,
        relays: Vec<(usize, Relay)>,
    ) -> Result<Vec<(usize, Result<f64>)>> {
        let id = self.id.as_str();
        let tmp = crate::server::names::temp_dir(&settings.server.dir, id);
        let access = crate::transport::Access::of(settings);
        let prepared = crate::transport::open(&self.server, id, &access)
            .map(|(conn, _)| conn)
            .and_then(|mut conn| direct::create_temp(conn.as_mut(), &tmp).map(|_| conn));
        let mut conn = match prepared {
            Ok(conn) => conn,
            Err(e) => {
                relays.into_iter().for_each(|(_, relay)| relay.close());
                return Err(e);
            }
        };
        let results = std::thread::scope(|s| {
            let handles: Vec<_> = relays
                .into_iter()
                .map(|(i, relay)| (i, s.spawn(move || peer_rate(relay.link, id))))
                .collect();
            let mut results: Vec<_> = local
                .map(|(i, l)| (i, local_rate(&mut l.0)))
                .into_iter()
                .collect();
            results.extend(
                handles
                    .into_iter()
                    .map(|(i, h)| (i, h.join().expect("probe does not panic"))),
            );
            results
        });
        // The uploads that were cut short may still be closing on the server: retry once.
        if direct::remove_temp(conn.as_mut(), &tmp).is_err() {
            std::thread::sleep(Duration::from_millis(500));
            direct::remove_temp(conn.as_mut(), &tmp).context(
                "removing the rate probe's temp dir (`relayup clean` cannot; remove it by hand)",
            )?;
        }
        Ok(results)
    }
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
        self.sample_at(bytes, self.start.elapsed())
    }

    /// [`Meter::sample`] at `elapsed` since the start.
    fn sample_at(&mut self, bytes: u64, elapsed: std::time::Duration) -> bool {
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
        crate::transport::Place::Part("0.part"),
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
        let sum = hashes::checksum_of(&mut ProbeData::new(PROBE_MAX))?;
        let mut meter = Meter::new();
        link.request_upload(0, &name, PROBE_MAX, &sum, (None, None))?;
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
                Event::Ready { .. } | Event::Relay { .. } | Event::Cleaned { .. } => {}
            }
        }
    })();
    // Closing stdin stops the relay's upload and removes its staged file.
    link.close();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_rate_leaves_out_the_warm_up_unless_the_upload_completed() {
        let mut m = Meter::new();
        // Socket buffers fill fast at first: 10 MB in the first half second.
        assert!(!m.sample_at(10_000_000, Duration::from_millis(500)));
        assert!(!m.sample_at(12_000_000, PROBE_WARMUP));
        assert!(m.sample_at(12_000_000 + 3_000_000 * 3, PROBE_TIME));
        let secs = (PROBE_TIME - PROBE_WARMUP).as_secs_f64();
        let cut = m.rate(false).unwrap();
        assert!((cut - 9_000_000.0 / secs).abs() < 1.0, "{cut}");
        // A probe that completed counts every byte from the start.
        let whole = m.rate(true).unwrap();
        assert!(
            (whole - 21_000_000.0 / PROBE_TIME.as_secs_f64()).abs() < 1.0,
            "{whole}"
        );
        assert!(Meter::new().rate(true).is_err(), "no byte, no rate");
    }
}
