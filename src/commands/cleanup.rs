//! `relayup clean`'s remote work for one unfinished send: its temp dir on the server
//! and what its relays staged on the peers.

use anyhow::{anyhow, Context, Result};
use std::path::Path;

use crate::config;
use crate::config::AssemblyKind;
use crate::error::{with_code, Code};
use crate::progress;
use crate::send::lock::LocalLock;
use crate::server::names;
use crate::server::{direct, merge};

/// Removes the temporary data of the unfinished send `id` on the server and the
/// peers, reaching them as `config_file` says.
pub fn clean_one(id: &str, config_file: &Path) -> Result<()> {
    // A send that is still running owns its temp data: never pull it from under it.
    if let Some(busy) = LocalLock::held(id) {
        return Err(anyhow!("{busy}; not cleaned")).context(Code::Busy);
    }
    let settings = config::load(config_file).map_err(|e| with_code(e, Code::Usage))?;
    match (settings.assembly, &settings.merge) {
        (AssemblyKind::Merge, Some(m)) => {
            let session = merge::login(&settings)?;
            merge::remove_temp(&session, &m.dir, id).map_err(|e| {
                match e.downcast_ref::<merge::Busy>() {
                    Some(busy) => anyhow!("{busy}; not cleaned").context(Code::Busy),
                    None => e,
                }
            })?;
        }
        _ => {
            let access = crate::transport::Access::of(&settings);
            let (mut conn, _) = crate::transport::open(&settings.server, id, &access)?;
            let tmp = names::temp_dir(&settings.server.dir, id);
            direct::remove_temp(conn.as_mut(), &tmp).map_err(|e| {
                if e.downcast_ref::<Code>() == Some(&Code::Busy) {
                    anyhow!("{}; not cleaned", crate::error::message(&e)).context(Code::Busy)
                } else {
                    e
                }
            })?;
        }
    }
    // Relays remove what they staged when they exit; this catches a peer that crashed.
    // The relay itself removes the files: nothing else runs on a peer.
    for peer in &settings.peers {
        let cleaned = crate::remote::peer::PeerLink::connect(
            peer,
            &settings.known_hosts,
            settings.io_timeout,
        )
        .and_then(|link| link.clean(id));
        if let Err(e) = cleaned {
            progress::warn(&format!("peer {} not cleaned: {e:#}", peer.login.name));
        }
    }
    Ok(())
}
