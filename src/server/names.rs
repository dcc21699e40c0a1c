//! Every name relayup gives the data it writes on the server and on the peers, in one
//! place: what one run writes must never be a name another run writes (see
//! [`crate::send::lock`]), and what `clean` removes must be exactly what sends create.
//!
//! On the server, next to the destination:
//! - `.relayup-<upload id>/`: the upload's temp dir (mode 0700), holding
//!   - `<n>.part`: part n, complete and size-checked;
//!   - `<n>.part.<host>.<run>.<k>`: a part while host uploads it (k-th upload of it);
//!   - `merged.<run>.tmp`: the file the merge appends parts to;
//!   - `lock`, `owner`: the run's lock and who holds it (append-merge: a file held
//!     with `flock`; direct writes: a directory holding `owner`);
//!   - `file`: with direct writes, the one file every host writes its parts into;
//!   - `<k>.file`: with direct writes of a release, file k's bytes (with the
//!     append-merge, `merged.<run>.<k>.tmp`: file k's merged parts);
//!   - `replaced.<run>.<file>`: with direct writes and `--overwrite` where the server
//!     cannot rename over a file, the old destination while the new one takes its
//!     place.
//! - `.relayup-<upload id>.done.<pid>`: a finished temp dir being removed.
//!
//! On a peer, in its staging dir (default [`DEFAULT_STAGING`]):
//! `<upload id>-<run>-<n>.part`.

/// What every temp name on the server starts with; a destination may not.
pub const TEMP_PREFIX: &str = ".relayup-";

/// A peer's staging dir when its config names none.
pub const DEFAULT_STAGING: &str = "~/.cache/relayup";

/// The lock file in the temp dir, and the file naming its holder.
pub const LOCK: &str = "lock";
pub const OWNER: &str = "owner";

/// With direct writes, the file every host writes into, inside the temp dir.
pub const DIRECT_FILE: &str = "file";

/// The path of the direct-write file: `dir` is the upload directory as one login sees
/// it.
pub fn direct_file(dir: &str, upload_id: &str) -> String {
    format!("{}/{DIRECT_FILE}", temp_dir(dir, upload_id))
}

/// With direct writes of a release, file `k`'s name inside the temp dir.
pub fn release_file(k: usize) -> String {
    format!("{k}.file")
}

/// With direct writes, where the destination of the temp file `file` (a name in the
/// temp dir) waits while it is replaced: one name per file, as a release's files may
/// be published at once.
pub fn replaced(run: &str, file: &str) -> String {
    format!("replaced.{run}.{file}")
}

/// The temp dir's name inside the upload directory.
pub fn temp_dir_name(upload_id: &str) -> String {
    format!("{TEMP_PREFIX}{upload_id}")
}

/// The temp dir's path: `dir` is the upload directory as one login sees it.
pub fn temp_dir(dir: &str, upload_id: &str) -> String {
    format!("{}/{}", dir.trim_end_matches('/'), temp_dir_name(upload_id))
}

/// Part `index`'s name in the temp dir.
pub fn part(index: usize) -> String {
    format!("{index}.part")
}

/// The part index of a name made by [`part`].
pub fn part_index(name: &str) -> Option<usize> {
    name.strip_suffix(".part")?.parse().ok()
}

/// The name a host uploads `part_name` under before it is complete: `tag` names the
/// host and run, `k` counts the host's uploads, so two hosts sending the same part
/// (after a failover) never write the same file.
pub fn uploading(part_name: &str, tag: &str, k: u64) -> String {
    format!("{part_name}.{tag}.{k}")
}

/// The merged file of run `run`.
pub fn merged(run: &str) -> String {
    format!("merged.{run}.tmp")
}

/// The merged file of a release's file `k` in run `run`.
pub fn merged_file(run: &str, k: usize) -> String {
    format!("merged.{run}.{k}.tmp")
}

/// A release's file `k` in run `run`, cut out of a part it shares with other small
/// files.
pub fn cut_file(run: &str, k: usize) -> String {
    format!("cut.{run}.{k}.tmp")
}

/// What the staged parts of one run start with on a peer.
pub fn staged_prefix(upload_id: &str, run: &str) -> String {
    format!("{upload_id}-{run}-")
}

/// Part `index` staged on a peer by run `run`.
pub fn staged(upload_id: &str, run: &str, index: usize) -> String {
    format!("{}{}", staged_prefix(upload_id, run), part(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_together() {
        assert_eq!(temp_dir("/up/", "ab12"), "/up/.relayup-ab12");
        assert_eq!(part_index(&part(17)), Some(17));
        assert_eq!(part_index("17.part.local.x.1"), None);
        assert!(staged("id", "run", 3).starts_with(&staged_prefix("id", "run")));
        assert_ne!(merged("a"), merged("b"));
        assert!(temp_dir_name("x").starts_with(TEMP_PREFIX));
    }
}
