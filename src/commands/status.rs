//! `relayup status` and `relayup clean`: the unfinished sends in the journal, and
//! removing their temporary data on the server and the peers (`cleanup.rs` does the
//! removing).

use anyhow::{anyhow, Context, Result};
use std::path::Path;
use std::process::ExitCode;

use super::cleanup;
use super::server_state;
use crate::error::{self, Code};
use crate::events::{ServerState, StatusRow};
use crate::progress;
use crate::send::journal::Journal;

pub fn status(as_json: bool, offline: bool) -> Result<ExitCode> {
    let all = Journal::list();
    // Every server at once: one slow or unreachable server does not hold up the rest.
    let servers: Vec<Option<ServerState>> = if offline {
        all.iter().map(|_| None).collect()
    } else {
        std::thread::scope(|s| {
            let asks: Vec<_> = all
                .iter()
                .map(|j| s.spawn(move || server_state::ask(j)))
                .collect();
            asks.into_iter().map(|h| h.join().ok()).collect()
        })
    };
    if as_json {
        for (j, server) in all.iter().zip(servers) {
            progress::emit(&StatusRow {
                id: j.id.clone(),
                source: j.source.to_string_lossy().into_owned(),
                dest: j.dest.clone(),
                config: j.config.to_string_lossy().into_owned(),
                started: j.started,
                bytes: j.size,
                parts: j.parts.len(),
                server,
            });
        }
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        eprintln!("relayup: no unfinished sends");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16}  {:>10}  {:>5}  {:<26}  {:<14}  {:<24}  source",
        "id", "size", "parts", "on server", "missing", "dest"
    );
    for (j, server) in all.iter().zip(&servers) {
        let (there, missing) = match server {
            None => ("-".to_string(), "-".to_string()),
            Some(s) if !s.reachable => ("?".to_string(), "?".to_string()),
            Some(s) => (
                format!(
                    "{}/{} parts, {}",
                    s.parts_there,
                    j.parts.len(),
                    crate::size::human(s.bytes_there)
                ),
                s.missing.clone(),
            ),
        };
        println!(
            "{:<16}  {:>10}  {:>5}  {:<26}  {:<14}  {:<24}  {}",
            j.id,
            crate::size::human(j.size),
            j.parts.len(),
            there,
            missing,
            j.dest,
            j.source.display()
        );
    }
    for (j, server) in all.iter().zip(&servers) {
        match server {
            Some(ServerState {
                problem: Some(p), ..
            }) => eprintln!("relayup: {}: the server could not be asked: {p}", j.id),
            Some(ServerState {
                running: Some(r), ..
            }) => eprintln!("relayup: {}: {r}", j.id),
            _ => {}
        }
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
        match cleanup::clean_one(&j.id, config_override.unwrap_or(&j.config)) {
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
                eprintln!("relayup: error: cleaning {}: {}", j.id, error::message(&e));
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
