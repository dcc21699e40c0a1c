//! `relayup status` asks each unfinished send's server what it holds: with direct
//! writes, the file's size and the lock (the journal knows which parts were verified);
//! with the append-merge, the complete part files in the temp dir (over the merge
//! login).

use anyhow::{anyhow, Result};
use std::collections::BTreeSet;

use crate::config::{self, AssemblyKind, Settings};
use crate::events::ServerState;
use crate::send::journal::Journal;
use crate::send::lock::Owner;
use crate::server::names;
use crate::transport::{self, Kind};

/// What the server holds of `j`'s send; a config that cannot be read or a server
/// that cannot be reached is said in `problem`.
pub fn ask(j: &Journal) -> ServerState {
    let settings = match config::load(&j.config) {
        Ok(s) => s,
        Err(e) => return unreachable("?", &e),
    };
    let kind = settings.assembly.name();
    let there = match settings.assembly {
        AssemblyKind::Direct => direct(&settings, j),
        AssemblyKind::Merge => merge(&settings, j),
    };
    match there {
        Ok((present, running)) => {
            let missing: Vec<usize> = (0..j.parts.len())
                .filter(|i| !present.contains(i))
                .collect();
            ServerState {
                reachable: true,
                kind: kind.into(),
                parts_there: present.len(),
                bytes_there: present.iter().map(|&i| j.parts[i].1).sum(),
                missing: ranges(&missing),
                running,
                problem: None,
            }
        }
        Err(e) => unreachable(kind, &e),
    }
}

fn unreachable(kind: &str, e: &anyhow::Error) -> ServerState {
    ServerState {
        kind: kind.into(),
        problem: Some(crate::error::message(e)),
        ..ServerState::default()
    }
}

/// Verified parts within the file's size, and the lock's owner.
fn direct(settings: &Settings, j: &Journal) -> Result<(BTreeSet<usize>, Option<String>)> {
    let access = transport::Access::of(settings);
    let (mut conn, _) = transport::open(&settings.server, &j.id, &access)?;
    let file = names::direct_file(&settings.server.dir, &j.id);
    let size = match conn.kind(&file)? {
        Kind::File(size) => size,
        _ => 0,
    };
    let present = j
        .verified
        .iter()
        .copied()
        .filter(|&i| j.parts.get(i).is_some_and(|&(off, len)| off + len <= size))
        .collect();
    let owner = format!(
        "{}/{}/{}",
        names::temp_dir(&settings.server.dir, &j.id),
        names::LOCK,
        names::OWNER
    );
    let running = conn
        .read_small(&owner)
        .ok()
        .and_then(|b| Owner::parse(String::from_utf8_lossy(&b).trim()))
        .filter(|o| !o.is_dead_here())
        .map(|o| format!("running {o}"));
    Ok((present, running))
}

/// Part files of the planned length in the temp dir (sizes only: no hashing).
fn merge(settings: &Settings, j: &Journal) -> Result<(BTreeSet<usize>, Option<String>)> {
    let m = settings.merge_login()?;
    let session = crate::server::merge::login(settings)?;
    let tmp = names::temp_dir(&m.dir, &j.id);
    let script = format!(
        "cd -- {} 2>/dev/null || exit 0\n\
         for f in *.part; do [ -f \"$f\" ] && printf '%s %s\\n' \"$f\" \"$(wc -c < \"$f\")\"; done\n\
         exit 0",
        crate::remote::quote::sh(&tmp)
    );
    let out = crate::remote::ssh::run(&session, &script)?;
    if out.status != 0 {
        return Err(anyhow!("listing {tmp} failed: {}", out.stderr.trim()));
    }
    let present = out
        .stdout
        .lines()
        .filter_map(|l| {
            let (name, size) = l.split_once(' ')?;
            let index = names::part_index(name)?;
            let size: u64 = size.trim().parse().ok()?;
            (j.parts.get(index)?.1 == size).then_some(index)
        })
        .collect();
    Ok((present, None))
}

/// `0-3,7,9-12` for the indexes (sorted) given; `-` for none.
pub fn ranges(indexes: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < indexes.len() {
        let start = indexes[i];
        let mut end = start;
        while i + 1 < indexes.len() && indexes[i + 1] == end + 1 {
            i += 1;
            end += 1;
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    if out.is_empty() {
        "-".into()
    } else {
        out.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::ranges;

    #[test]
    fn compact_ranges() {
        assert_eq!(ranges(&[]), "-");
        assert_eq!(ranges(&[5]), "5");
        assert_eq!(ranges(&[0, 1, 2, 3, 7, 9, 10, 11, 12]), "0-3,7,9-12");
        assert_eq!(ranges(&[1, 3, 5]), "1,3,5");
    }
}
