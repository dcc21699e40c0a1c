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

/// A release journal's files: where each starts in the stream, and its size.
fn starts(j: &Journal) -> Vec<(u64, u64)> {
    let mut at = 0;
    j.files
        .iter()
        .map(|(_, size)| {
            at += size;
            (at - size, *size)
        })
        .collect()
}

/// The release file (by index) holding the part at `offset`.
fn file_of(starts: &[(u64, u64)], offset: u64) -> usize {
    starts
        .partition_point(|&(start, size)| start + size <= offset)
        .min(starts.len().saturating_sub(1))
}

/// Verified parts within their file's size (a release's files published already:
/// all their parts), and the lock's owner.
fn direct(settings: &Settings, j: &Journal) -> Result<(BTreeSet<usize>, Option<String>)> {
    let access = transport::Access::of(settings);
    let (mut conn, _) = transport::open(&settings.server, &j.id, &access)?;
    let tmp = names::temp_dir(&settings.server.dir, &j.id);
    let present = if j.files.is_empty() {
        let size = match conn.kind(&names::direct_file(&settings.server.dir, &j.id))? {
            Kind::File(size) => size,
            _ => 0,
        };
        j.verified
            .iter()
            .copied()
            .filter(|&i| j.parts.get(i).is_some_and(|&(off, len)| off + len <= size))
            .collect()
    } else {
        let starts = starts(j);
        let mut sizes = Vec::with_capacity(j.files.len());
        let mut published = Vec::with_capacity(j.files.len());
        for (k, (dest, size)) in j.files.iter().enumerate() {
            let temp = format!("{tmp}/{}", names::release_file(k));
            sizes.push(match conn.kind(&temp)? {
                Kind::File(n) => n,
                _ => 0,
            });
            let dest = format!("{}/{dest}", settings.server.dir.trim_end_matches('/'));
            published.push(conn.kind(&dest)? == Kind::File(*size));
        }
        (0..j.parts.len())
            .filter(|&i| {
                let (off, len) = j.parts[i];
                let k = file_of(&starts, off);
                published[k] || (j.verified.contains(&i) && off - starts[k].0 + len <= sizes[k])
            })
            .collect()
    };
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
    // A release's files published already: their parts count as there.
    let mut dests = String::new();
    for (k, (dest, size)) in j.files.iter().enumerate() {
        dests.push_str(&format!(
            "[ -f {d} ] && [ \"$(wc -c < {d})\" -eq {size} ] && echo \"published {k}\"\n",
            d = crate::remote::quote::sh(&format!("{}/{dest}", m.dir.trim_end_matches('/')))
        ));
    }
    let script = format!(
        "{dests}cd -- {} 2>/dev/null || exit 0\n\
         for f in *.part; do [ -f \"$f\" ] && printf '%s %s\\n' \"$f\" \"$(wc -c < \"$f\")\"; done\n\
         exit 0",
        crate::remote::quote::sh(&tmp)
    );
    let out = crate::remote::ssh::run(&session, &script)?;
    if out.status != 0 {
        return Err(anyhow!("listing {tmp} failed: {}", out.stderr.trim()));
    }
    let mut present: BTreeSet<usize> = out
        .stdout
        .lines()
        .filter_map(|l| {
            let (name, size) = l.split_once(' ')?;
            let index = names::part_index(name)?;
            let size: u64 = size.trim().parse().ok()?;
            (j.parts.get(index)?.1 == size).then_some(index)
        })
        .collect();
    let published: BTreeSet<usize> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("published ")?.trim().parse().ok())
        .collect();
    if !published.is_empty() {
        let starts = starts(j);
        present.extend(
            (0..j.parts.len()).filter(|&i| published.contains(&file_of(&starts, j.parts[i].0))),
        );
    }
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
