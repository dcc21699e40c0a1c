//! `relayup status` and `relayup clean`: the unfinished sends in the journal, and
//! removing their temporary data on the server and the peers.

use anyhow::{anyhow, Context, Result};
use std::path::Path;
use std::process::ExitCode;

use crate::config;
use crate::error::{with_code, Code};
use crate::events::StatusRow;
use crate::remote::quote;
use crate::remote::ssh::{self, Trust};
use crate::send::journal::Journal;
use crate::send::lock::LocalLock;
use crate::server::merge;

pub fn status(as_json: bool) -> Result<ExitCode> {
    let all = Journal::list();
    if as_json {
        for j in &all {
            crate::progress::emit(&StatusRow {
                id: j.id.clone(),
                source: j.source.to_string_lossy().into_owned(),
                dest: j.dest.clone(),
                config: j.config.to_string_lossy().into_owned(),
                started: j.started,
                bytes: j.size,
                parts: j.parts.len(),
            });
        }
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        eprintln!("relayup: no unfinished sends");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16}  {:>10}  {:>5}  {:<24}  source",
        "id", "size", "parts", "dest"
    );
    for j in &all {
        println!(
            "{:<16}  {:>10}  {:>5}  {:<24}  {}",
            j.id,
            crate::size::human(j.size),
            j.parts.len(),
            j.dest,
            j.source.display()
        );
    }
    eprintln!("relayup: run the same `relayup send` again to resume one, or `relayup clean [ID]` to remove its temporary data");
    Ok(ExitCode::SUCCESS)
}

pub fn clean(ids: &[String], config_override: Option<&Path>) -> Result<ExitCode> {
    let all: Vec<Journal> = Journal::list()
        .into_iter()
        .filter(|j| ids.is_empty() || ids.contains(&j.id))
        .collect();
    for id in ids {
        if !all.iter().any(|j| &j.id == id) {
            return Err(anyhow!(
                "no unfinished send with id {id}; `relayup status` lists them"
            ))
            .context(Code::Usage);
        }
    }
    let mut failed = None;
    for j in &all {
        match clean_one(j, config_override) {
            Ok(()) => {
                Journal::remove(&j.id);
                eprintln!(
                    "relayup: cleaned {} ({} -> {})",
                    j.id,
                    j.source.display(),
                    j.dest
                );
            }
            Err(e) => {
                let code = e.downcast_ref::<Code>().copied().unwrap_or(Code::Connect);
                failed = Some(failed.map_or(code, |c: Code| c.max(code)));
                eprintln!(
                    "relayup: error: cleaning {}: {}",
                    j.id,
                    crate::error::message(&e)
                );
            }
        }
    }
    if let Some(code) = failed {
        return Ok(ExitCode::from(code.exit_code()));
    }
    if all.is_empty() {
        eprintln!("relayup: no unfinished sends");
    }
    Ok(ExitCode::SUCCESS)
}

fn clean_one(j: &Journal, config_override: Option<&Path>) -> Result<()> {
    // A send that is still running owns its temp data: never pull it from under it.
    if let Some(busy) = LocalLock::held(&j.id) {
        return Err(anyhow!("{busy}; not cleaned")).context(Code::Busy);
    }
    let settings = config::load(config_override.unwrap_or(&j.config))
        .map_err(|e| with_code(e, Code::Usage))?;
    let session = ssh::connect(
        &settings.merge.login,
        Trust::KnownHosts(&settings.known_hosts),
        None,
        settings.io_timeout,
    )?;
    merge::remove_temp(&session, &settings.merge.dir, &j.id).map_err(|e| {
        match e.downcast_ref::<merge::Busy>() {
            Some(busy) => anyhow!("{busy}; not cleaned").context(Code::Busy),
            None => e,
        }
    })?;
    // Relays remove what they staged when they exit; this catches a peer that crashed.
    for peer in &settings.peers {
        let staging = peer
            .staging
            .clone()
            .unwrap_or_else(|| crate::server::names::DEFAULT_STAGING.into());
        // Every run's staged parts of this upload (names::staged).
        let script = format!("rm -f -- {}/{}-*.part", quote::sh_home(&staging), j.id);
        match ssh::connect(
            &peer.login,
            Trust::KnownHosts(&settings.known_hosts),
            None,
            settings.io_timeout,
        ) {
            Ok(s) => {
                let _ = ssh::run(&s, &script);
            }
            Err(e) => {
                crate::progress::warn(&format!("peer {} not cleaned: {e:#}", peer.login.name))
            }
        }
    }
    Ok(())
}
