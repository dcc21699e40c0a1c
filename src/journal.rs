//! The journal of unfinished sends, under `$XDG_STATE_HOME/relayup/` (default
//! `~/.local/state/relayup/`): enough to resume with the same parts and to clean up.
//! The server is trusted over the journal: a part counts as sent only if the server
//! has it with the right size and MD5.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::plan::{Part, Plan, Strategy};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Journal {
    pub id: String,
    pub source: PathBuf,
    pub dest: String,
    pub config: PathBuf,
    /// Seconds since the epoch when the send first started.
    pub started: u64,
    pub size: u64,
    pub equal: bool,
    /// Byte ranges as `[offset, len]`, in index order.
    pub parts: Vec<(u64, u64)>,
    /// With `equal`: each part's share.
    #[serde(default)]
    pub owners: Vec<usize>,
}

pub fn dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => crate::config::home()?.join(".local").join("state"),
    };
    Ok(base.join("relayup"))
}

fn path(id: &str) -> Result<PathBuf> {
    Ok(dir()?.join(format!("{id}.json")))
}

impl Journal {
    pub fn new(id: &str, source: &Path, dest: &str, config: &Path, plan: &Plan) -> Journal {
        Journal {
            id: id.to_string(),
            source: std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf()),
            dest: dest.to_string(),
            config: std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf()),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            size: plan.size,
            equal: plan.strategy == Strategy::Equal,
            parts: plan.parts.iter().map(|p| (p.offset, p.len)).collect(),
            owners: plan.owners.clone(),
        }
    }

    /// The plan this journal recorded, if it still describes `size` bytes exactly.
    pub fn plan(&self, size: u64) -> Option<Plan> {
        let mut next = 0;
        let mut parts = Vec::new();
        for (index, &(offset, len)) in self.parts.iter().enumerate() {
            if offset != next || len == 0 {
                return None;
            }
            next += len;
            parts.push(Part { index, offset, len });
        }
        let owners_ok = !self.equal || self.owners.len() == self.parts.len();
        (next == size && self.size == size && owners_ok).then_some(Plan {
            size,
            strategy: if self.equal {
                Strategy::Equal
            } else {
                Strategy::Adaptive
            },
            parts,
            owners: self.owners.clone(),
        })
    }

    pub fn load(id: &str) -> Option<Journal> {
        let text = std::fs::read_to_string(path(id).ok()?).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn save(&self) -> Result<()> {
        let dir = dir()?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let final_path = path(&self.id)?;
        let tmp = final_path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &final_path)
            .with_context(|| format!("writing {}", final_path.display()))
    }

    pub fn remove(id: &str) {
        if let Ok(p) = path(id) {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Every unfinished send, oldest first.
    pub fn list() -> Vec<Journal> {
        let Ok(dir) = dir() else { return Vec::new() };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut all: Vec<Journal> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok())
            // Read back from disk: an id that is not ours never reaches a path or command.
            .filter(|j: &Journal| crate::lock::valid_upload_id(&j.id))
            .collect();
        all.sort_by_key(|j| j.started);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_round_trips_and_rejects_damage() {
        let plan = Plan::new(100, 3, Strategy::Equal, None);
        let j = Journal::new("abc", Path::new("/x"), "d", Path::new("/c"), &plan);
        let back = j.plan(100).unwrap();
        assert_eq!(back.parts, plan.parts);
        assert_eq!(back.strategy, Strategy::Equal);
        assert!(
            j.plan(101).is_none(),
            "a different size is a different file"
        );
        let mut gap = j.clone();
        gap.parts[1].0 += 1;
        assert!(gap.plan(100).is_none());
    }
}
