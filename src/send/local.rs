//! This machine as a [`Host`] of the send: it uploads its parts straight from the
//! source to the server, on a thread of its own, and reports on them as a peer's relay
//! does, so one loop (see [`crate::send::hosts`]) drives it like every peer.

use anyhow::{anyhow, Result};

use std::io::Read;

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use crate::send::hashes::Hashes;
use crate::send::hosts::{Host, Report};
use crate::send::plan::Part;
use crate::send::source::{Places, Source};
use crate::transport::{Place, Server};

pub struct LocalHost {
    parts: Option<Sender<Part>>,
    reports: Receiver<Report>,
}

impl LocalHost {
    /// Starts the uploading thread with this machine's login on the server.
    /// With `direct`, parts are written into the upload's one file at their offsets.
    pub fn start(
        mut server: Server,
        source: Arc<Source>,
        hashes: Arc<Hashes>,
        places: Arc<Places>,
    ) -> LocalHost {
        let (parts, todo) = mpsc::channel::<Part>();
        let (report, reports) = mpsc::channel();
        std::thread::spawn(move || {
            for part in todo {
                let progress = report.clone();
                let name = part.file_name();
                let (into, offset) = places.of(part.index);
                let place = Place::of(&name, into, offset);
                let result =
                    server
                        .put_part(
                            place,
                            part.len,
                            &mut || {
                                Ok(Box::new(source.reader(part.offset, part.len)?)
                                    as Box<dyn Read>)
                            },
                            &mut |bytes| {
                                let _ = progress.send(Report::Progress {
                                    index: part.index,
                                    bytes,
                                });
                            },
                            crate::interrupt::flag(),
                        )
                        // The bytes came from the source itself: their checksum is the
                        // source's, from the one pass over it.
                        .and_then(|_| hashes.part(part.index));
                let r = match result {
                    Ok(checksum) => Report::Done {
                        index: part.index,
                        bytes: part.len,
                        checksum,
                    },
                    Err(e) => Report::Failed {
                        index: part.index,
                        message: format!("{e:#}"),
                        server: true,
                    },
                };
                if report.send(r).is_err() {
                    break;
                }
            }
        });
        LocalHost {
            parts: Some(parts),
            reports,
        }
    }
}

impl Host for LocalHost {
    fn name(&self) -> &str {
        "local"
    }

    fn stages(&self) -> bool {
        false
    }

    /// Its uploads already retry on a new connection (see `Server::put_part`): a part
    /// that still fails, when other hosts reach the server, means this machine cannot.
    fn max_part_failures(&self) -> usize {
        1
    }

    fn begin(&mut self, part: &Part, _: &Hashes) -> Result<Option<String>> {
        self.parts
            .as_ref()
            .and_then(|p| p.send(*part).ok())
            .ok_or_else(|| anyhow!("this machine's upload thread stopped"))?;
        Ok(None)
    }

    fn next_report(&mut self) -> Result<Report> {
        // The uploads time out on their own (--stall-timeout per network call).
        self.reports
            .recv()
            .map_err(|_| anyhow!("this machine's upload thread stopped"))
    }

    fn tick(&mut self, _: Option<u64>) -> Result<()> {
        Ok(())
    }
}
