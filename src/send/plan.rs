//! The plan: which byte ranges of the source become which parts. Pure, so it can be
//! table-tested and printed by `--dry-run` before anything touches the network.

use crate::size::human;

/// How the file is cut and handed out (named in `--json` events as `adaptive` or `equal`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Many parts in a shared queue; whichever host is free takes the next one.
    Adaptive,
    /// Exactly one part per host, the classic split.
    Equal,
}

/// One contiguous byte range of the source, uploaded as `<index>.part`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub index: usize,
    pub offset: u64,
    pub len: u64,
}

impl Part {
    /// The part's file name on peers and on the server. Generated here, never user text.
    pub fn file_name(&self) -> String {
        crate::server::names::part(self.index)
    }
}

const MIB: u64 = 1 << 20;
/// Smallest default part: smaller parts spend more time on per-part round trips.
pub const MIN_DEFAULT_PART: u64 = 8 * MIB;
/// Largest default part: bigger parts leave a slow host with a long tail at the end.
pub const MAX_DEFAULT_PART: u64 = 64 * MIB;

/// The default part size for `adaptive`: about eight parts per host, clamped to
/// 8–64 MiB and rounded to whole MiB.
pub fn default_part_size(size: u64, hosts: usize) -> u64 {
    let per = size / (hosts.max(1) as u64 * 8);
    let rounded = per.div_ceil(MIB) * MIB;
    rounded.clamp(MIN_DEFAULT_PART, MAX_DEFAULT_PART)
}

/// Cuts `size` bytes into parts of `part_size` (the last one shorter). A 0-byte file
/// has no parts.
pub fn fixed(size: u64, part_size: u64) -> Vec<Part> {
    assert!(part_size > 0, "part size must be positive");
    let count = size.div_ceil(part_size);
    (0..count)
        .map(|i| {
            let offset = i * part_size;
            Part {
                index: i as usize,
                offset,
                len: part_size.min(size - offset),
            }
        })
        .collect()
}

/// Smallest part `guided` cuts for a server more than [`NEAR`] away: below this,
/// per-part round trips (a new FTP data connection, STOR, SIZE, RNFR/RNTO: about 7)
/// start to cost more than a slow host's tail saves.
pub const MIN_GUIDED_PART: u64 = 2 * MIB;

/// Smallest part `guided` cuts for a server within [`NEAR`]: a part's round trips
/// cost next to nothing there, and the smaller the last parts, the closer together
/// the hosts finish (in the lab, 3 peers at 80 Mbit/s, the last parts of 2 MiB left
/// the hosts finishing up to 0.25 s apart; of 512 KiB, 0.05 s).
pub const MIN_NEAR_PART: u64 = MIB / 2;

/// A server that answers a command within this is near (a LAN).
pub const NEAR: std::time::Duration = std::time::Duration::from_millis(2);

/// The smallest part `guided` cuts, for a server whose round trip is `round_trip`
/// (`None`: not known).
pub fn smallest_part(round_trip: Option<std::time::Duration>) -> u64 {
    match round_trip {
        Some(rt) if rt <= NEAR => MIN_NEAR_PART,
        _ => MIN_GUIDED_PART,
    }
}

/// The size of a host's `round`-th part at the start: 2 MiB, 4 MiB, 8 MiB, ...
/// A peer stages its next part while it uploads the current one; doubling keeps each
/// staging shorter than the upload it hides behind, so no uplink waits at the start.
/// (A 2 MiB part followed straight by a 16 MiB one left every peer idle for ~0.5 s
/// in the lab.)
fn ramp(round: usize) -> u64 {
    MIN_GUIDED_PART << round.min(16)
}

/// Guided self-scheduling: a ramp of small parts (so all hosts start at once, see
/// [`ramp`]), then parts of `remaining / (4 * hosts)`, at most `max` and at
/// least `smallest` (see [`smallest_part`]): big early (few round trips), small at
/// the end (the hosts finish close together, and a slow host that takes one near the
/// end holds nobody up long).
pub fn guided(size: u64, hosts: usize, max: u64, smallest: u64) -> Vec<Part> {
    let hosts = hosts.max(1);
    // A host alone has nobody to finish together with: small parts would only cost.
    let smallest = if hosts == 1 {
        MIN_GUIDED_PART
    } else {
        smallest
    };
    let divisor = 4 * hosts as u64;
    let mut parts = Vec::new();
    let mut offset = 0;
    while offset < size {
        let remaining = size - offset;
        // Whole multiples of the smallest part, so the plan reads well in --dry-run.
        let guided = (remaining / divisor / smallest * smallest).clamp(smallest, max.max(smallest));
        let want = ramp(parts.len() / hosts).min(guided);
        let len = want.min(remaining);
        parts.push(Part {
            index: parts.len(),
            offset,
            len,
        });
        offset += len;
    }
    parts
}

/// Cuts `size` bytes into `hosts` parts whose lengths differ by at most one byte; fewer
/// parts when there are fewer bytes than hosts (no empty parts).
pub fn equal(size: u64, hosts: usize) -> Vec<Part> {
    let n = (hosts.max(1) as u64).min(size);
    if n == 0 {
        return Vec::new();
    }
    let base = size / n;
    let extra = size % n;
    let mut offset = 0;
    (0..n)
        .map(|i| {
            let len = base + u64::from(i < extra);
            let part = Part {
                index: i as usize,
                offset,
                len,
            };
            offset += len;
            part
        })
        .collect()
}

/// Largest piece of an `equal` share.
pub const EQUAL_PIECE: u64 = 16 * MIB;

/// `equal`: the classic split, one contiguous share per host (lengths differ by at
/// most a byte), each share sent in pieces — 2, 4 and 8 MiB first (see
/// [`ramp`]), then [`EQUAL_PIECE`] — so a peer starts uploading as soon
/// as its first piece is staged instead of after its whole share. Returns the parts
/// and each part's share.
pub fn equal_pieces(size: u64, hosts: usize) -> (Vec<Part>, Vec<usize>) {
    let mut parts = Vec::new();
    let mut owners = Vec::new();
    for (share, s) in equal(size, hosts).into_iter().enumerate() {
        let mut offset = s.offset;
        let end = s.offset + s.len;
        let mut round = 0;
        while offset < end {
            let max = ramp(round).min(EQUAL_PIECE);
            let len = max.min(end - offset);
            parts.push(Part {
                index: parts.len(),
                offset,
                len,
            });
            owners.push(share);
            offset += len;
            round += 1;
        }
    }
    (parts, owners)
}

/// Whether a release's small files may share a part. They may where the server cuts
/// a part into its files (the append-merge); with direct writes every file is its
/// own upload anyway, so each small file stays a part of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmallFiles {
    Apart,
    Together,
}

/// Most files packed into one part: the merge cuts a part's files out of it one
/// after another, and takes them in batches of this many.
pub const PACK_FILES: usize = 256;

/// Smallest limit for a packed part's bytes.
const MIN_PACK: u64 = MIB;

/// Largest limit for a packed part's bytes: packed parts may come last, where a big
/// one keeps a host busy after the others are done (12 MiB ones cost 3% of a
/// 400 MiB release in the lab), while at 4 MiB the round trips of a part are
/// already small beside its upload.
const MAX_PACK: u64 = 4 * MIB;

/// How big a part of packed small files may be: about four per host of the small
/// files' bytes (so every host gets some), from 1 MiB to 4 MiB, at most `max`.
fn pack_limit(sizes: &[u64], hosts: usize, max: u64) -> u64 {
    let small: u64 = sizes.iter().filter(|&&s| s > 0 && s < max).sum();
    (small / (4 * hosts.max(1) as u64))
        .clamp(MIN_PACK, MAX_PACK)
        .min(max)
}

/// How many of the files `sizes` (from the next one on) go into one part: a run of
/// non-empty files that together fit in `limit` bytes, at most [`PACK_FILES`]; 1
/// when the next file does not share (it is big, or empty, or the next one is).
/// Empty files are never packed: they have no bytes to cut out.
pub fn pack(sizes: &[u64], limit: u64) -> usize {
    let mut total = 0;
    let mut n = 0;
    for &s in sizes.iter().take(PACK_FILES) {
        if s == 0 || total + s > limit {
            break;
        }
        total += s;
        n += 1;
    }
    n.max(1)
}

/// A whole plan: what `--dry-run` prints and what the scheduler hands out.
#[derive(Clone, Debug)]
pub struct Plan {
    pub size: u64,
    pub strategy: Strategy,
    pub parts: Vec<Part>,
    /// With `equal`: the share (host number among the live hosts) each part belongs to.
    pub owners: Vec<usize>,
}

impl Plan {
    /// `smallest`: see [`smallest_part`].
    pub fn new(
        size: u64,
        hosts: usize,
        strategy: Strategy,
        part_size: Option<u64>,
        smallest: u64,
    ) -> Plan {
        let (parts, owners) = match strategy {
            Strategy::Equal => equal_pieces(size, hosts),
            Strategy::Adaptive => {
                let parts = match part_size {
                    Some(p) => fixed(size, p),
                    None => guided(size, hosts, default_part_size(size, hosts), smallest),
                };
                (parts, Vec::new())
            }
        };
        Plan {
            size,
            strategy,
            parts,
            owners,
        }
    }

    /// The plan for `source`: one file as [`Plan::new`] cuts it; a release file by
    /// file: a file smaller than a part is never split, a bigger one is cut into
    /// parts of the part size, and no part holds bytes of a big file and of another
    /// file. With [`SmallFiles::Together`], runs of small files are packed into
    /// shared parts (see [`pack`]), so a thousand small files do not cost a thousand
    /// uploads. Empty files have no parts.
    pub fn for_source(
        source: &crate::send::source::Source,
        hosts: usize,
        strategy: Strategy,
        part_size: Option<u64>,
        small: SmallFiles,
        smallest: u64,
    ) -> Plan {
        if !source.is_release() {
            return Plan::new(source.size, hosts, strategy, part_size, smallest);
        }
        let max = part_size.unwrap_or_else(|| default_part_size(source.size, hosts));
        let sizes: Vec<u64> = source.files.iter().map(|f| f.size()).collect();
        let pack_max = match small {
            SmallFiles::Apart => 0,
            SmallFiles::Together => pack_limit(&sizes, hosts, max),
        };
        let mut parts = Vec::new();
        let mut push = |offset, len| {
            parts.push(Part {
                index: parts.len(),
                offset,
                len,
            })
        };
        let mut k = 0;
        while k < source.files.len() {
            let f = &source.files[k];
            let n = pack(&sizes[k..], pack_max);
            if n > 1 {
                push(f.start, sizes[k..k + n].iter().sum());
                k += n;
                continue;
            }
            for p in fixed(f.size(), max) {
                push(f.start + p.offset, p.len);
            }
            k += 1;
        }
        Plan {
            size: source.size,
            strategy: Strategy::Adaptive,
            parts,
            owners: Vec::new(),
        }
    }

    /// Human description, one line per part (for `--dry-run`).
    pub fn describe(&self, hosts: &[String]) -> String {
        let mut out = String::new();
        let strategy = match self.strategy {
            Strategy::Adaptive => "adaptive (shared queue: free hosts take the next part; at the end, the faster ones)",
            Strategy::Equal => "equal (one share per host, sent in pieces)",
        };
        out.push_str(&format!(
            "plan: {} in {} part(s), strategy {strategy}\nhosts ({}): {}\n",
            human(self.size),
            self.parts.len(),
            hosts.len(),
            hosts.join(", ")
        ));
        for p in &self.parts {
            let who = match self.strategy {
                Strategy::Equal => self
                    .owners
                    .get(p.index)
                    .and_then(|o| hosts.get(*o))
                    .map(String::as_str)
                    .unwrap_or("?"),
                Strategy::Adaptive => "next free host",
            };
            out.push_str(&format!(
                "  part {:>4}  bytes {}..{}  ({})  -> {who}\n",
                p.index,
                p.offset,
                p.offset + p.len,
                human(p.len)
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_files_are_packed_up_to_the_limit_and_never_with_empty_ones() {
        assert_eq!(pack(&[3, 4, 5], 8), 2);
        assert_eq!(pack(&[3, 4, 1], 8), 3);
        // A big file goes alone, as does one followed by a big one.
        assert_eq!(pack(&[9, 1], 8), 1);
        assert_eq!(pack(&[1, 9], 8), 1);
        // Empty files have no bytes to cut out: they end a run.
        assert_eq!(pack(&[1, 0, 1], 8), 1);
        assert_eq!(pack(&[0, 1], 8), 1);
        // At most PACK_FILES files.
        assert_eq!(pack(&[1; 1000], 1 << 20), PACK_FILES);
        // Four packed parts per host of the small files' bytes, 1 to 4 MiB, at most a part.
        assert_eq!(pack_limit(&[MIB; 40], 4, 13 * MIB), 2 * MIB + MIB / 2);
        assert_eq!(pack_limit(&[MIB; 200], 4, 13 * MIB), 4 * MIB);
        assert_eq!(pack_limit(&[1000; 10], 4, 13 * MIB), MIB);
        assert_eq!(pack_limit(&[100 * MIB, MIB], 2, 8 * MIB), MIB);
        assert_eq!(pack_limit(&[1000; 10], 2, 1000), 1000);
    }

    fn assert_covers(parts: &[Part], size: u64) {
        let mut next = 0;
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(p.index, i, "indexes are dense and ordered");
            assert_eq!(p.offset, next, "no gap or overlap before part {i}");
            assert!(p.len > 0, "no empty part");
            next += p.len;
        }
        assert_eq!(next, size, "parts cover [0, size) exactly");
    }

    #[test]
    fn equal_covers_exactly() {
        for size in [0, 1, 2, 3, 4, 5, 7, 100, 1 << 20, (1 << 30) + 3] {
            for hosts in 1..=9 {
                let parts = equal(size, hosts);
                assert_covers(&parts, size);
                assert_eq!(parts.len() as u64, (hosts as u64).min(size));
                let max = parts.iter().map(|p| p.len).max().unwrap_or(0);
                let min = parts.iter().map(|p| p.len).min().unwrap_or(0);
                assert!(max - min <= 1, "equal parts differ by at most a byte");
            }
        }
    }

    #[test]
    fn fixed_covers_exactly() {
        let ps = 1 << 20;
        for size in [0, 1, ps - 1, ps, ps + 1, 3 * ps, 3 * ps + 17] {
            let parts = fixed(size, ps);
            assert_covers(&parts, size);
            assert!(parts.iter().all(|p| p.len <= ps));
        }
        assert_eq!(fixed(0, 10).len(), 0);
        assert_eq!(fixed(10, 10).len(), 1);
        assert_eq!(fixed(11, 10).len(), 2);
    }

    #[test]
    fn guided_covers_exactly_and_shrinks() {
        for size in [
            0,
            1,
            MIB - 1,
            MIB,
            3 * MIB + 1,
            100 * MIB + 7,
            (5 << 30) + 3,
        ] {
            for hosts in [1, 4, 8] {
                let parts = guided(size, hosts, default_part_size(size, hosts), MIN_GUIDED_PART);
                assert_covers(&parts, size);
                for i in hosts..parts.len() {
                    assert!(
                        parts[i].len <= 2 * parts[i - hosts].len,
                        "a host's next part is at most twice its last"
                    );
                }
                let peak = (0..parts.len()).max_by_key(|&i| (parts[i].len, usize::MAX - i));
                for w in parts.windows(2).skip(peak.unwrap_or(0)) {
                    assert!(w[1].len <= w[0].len, "sizes never grow after the ramp");
                }
                assert!(parts.iter().all(|p| p.len <= MAX_DEFAULT_PART));
            }
        }
        let parts = guided(
            400 * MIB,
            4,
            default_part_size(400 * MIB, 4),
            MIN_GUIDED_PART,
        );
        assert_eq!(parts[0].len, MIN_GUIDED_PART, "a small first part per host");
        assert_eq!(parts[3].len, MIN_GUIDED_PART);
        assert_eq!(parts[4].len, 2 * MIN_GUIDED_PART, "then doubling");
        assert_eq!(parts[8].len, 4 * MIN_GUIDED_PART);
        assert_eq!(parts[12].len, 13 * MIB, "then guided");
        assert_eq!(parts[parts.len() - 2].len, MIN_GUIDED_PART);
        assert!(parts.last().unwrap().len <= MIN_GUIDED_PART);
        assert!(parts.len() < 100, "{} parts", parts.len());
    }

    #[test]
    fn a_near_server_gets_smaller_last_parts_but_a_lone_host_does_not() {
        use std::time::Duration;
        assert_eq!(
            smallest_part(Some(Duration::from_micros(300))),
            MIN_NEAR_PART
        );
        assert_eq!(
            smallest_part(Some(Duration::from_millis(20))),
            MIN_GUIDED_PART
        );
        assert_eq!(smallest_part(None), MIN_GUIDED_PART);
        let size = 300 * MIB;
        let max = default_part_size(size, 4);
        let far = guided(size, 4, max, MIN_GUIDED_PART);
        let near = guided(size, 4, max, MIN_NEAR_PART);
        assert_covers(&near, size);
        assert_eq!(near[..12], far[..12], "the same ramp");
        assert_eq!(near[near.len() - 2].len, MIN_NEAR_PART);
        assert_eq!(far[far.len() - 2].len, MIN_GUIDED_PART);
        // The tail of 4 parts per host holds a quarter as much.
        let tail = |p: &[Part]| p[p.len() - 16..].iter().map(|p| p.len).sum::<u64>();
        assert!(
            tail(&near) * 3 < tail(&far),
            "{} {}",
            tail(&near),
            tail(&far)
        );
        assert!(
            near.len() < far.len() + 40,
            "{} vs {} parts",
            near.len(),
            far.len()
        );
        let alone = guided(size, 1, default_part_size(size, 1), MIN_NEAR_PART);
        assert!(alone.iter().rev().skip(1).all(|p| p.len >= MIN_GUIDED_PART));
        assert_eq!(guided(MIB, 1, MIN_DEFAULT_PART, MIN_NEAR_PART).len(), 1);
    }

    #[test]
    fn default_part_size_is_clamped() {
        assert_eq!(default_part_size(0, 4), MIN_DEFAULT_PART);
        assert_eq!(default_part_size(10 << 20, 4), MIN_DEFAULT_PART);
        assert_eq!(default_part_size(100 << 30, 4), MAX_DEFAULT_PART);
        // 1 GiB over 4 hosts: 32 parts of 32 MiB.
        assert_eq!(default_part_size(1 << 30, 4), 32 * MIB);
    }

    #[test]
    fn equal_pieces_keep_one_share_per_host() {
        for size in [0, 1, 3, 100, 50 * MIB + 3, 300 * MIB] {
            for hosts in 1..=5 {
                let (parts, owners) = equal_pieces(size, hosts);
                assert_covers(&parts, size);
                assert_eq!(parts.len(), owners.len());
                // Each share is contiguous and matches the classic split.
                for (share, s) in equal(size, hosts).iter().enumerate() {
                    let mine: Vec<&Part> = parts
                        .iter()
                        .zip(&owners)
                        .filter(|(_, o)| **o == share)
                        .map(|(p, _)| p)
                        .collect();
                    assert_eq!(mine.first().unwrap().offset, s.offset);
                    assert_eq!(mine.iter().map(|p| p.len).sum::<u64>(), s.len);
                    assert!(mine.iter().all(|p| p.len <= EQUAL_PIECE));
                    assert!(mine[0].len <= MIN_GUIDED_PART, "a small first piece");
                }
            }
        }
    }

    #[test]
    fn plan_picks_by_strategy() {
        let p = Plan::new(100, 4, Strategy::Equal, None, MIN_GUIDED_PART);
        assert_eq!(p.parts.len(), 4);
        assert_eq!(p.owners, [0, 1, 2, 3]);
        let p = Plan::new(100, 4, Strategy::Adaptive, Some(30), MIN_GUIDED_PART);
        assert_eq!(p.parts.len(), 4);
        assert_eq!(p.parts[3].len, 10);
        assert!(p.describe(&["local".into()]).contains("4 part(s)"));
    }
}
