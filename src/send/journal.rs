//! The journal of unfinished sends, under `$XDG_STATE_HOME/relayup/` (default
//! `~/.local/state/relayup/`; on Windows `%LOCALAPPDATA%\relayup\`): enough to resume
//! with the same parts and to clean up. The server is trusted over the journal: a part
//! counts as sent only if the server has it with the right size and MD5.
//!
//! Paths are kept exactly, even when they are not UTF-8 (a Unix file name is bytes):
//! a UTF-8 path is a JSON string as it always was, any other is `{"base64": "…"}`
//! of its bytes (on Windows, of its UTF-16 units: see [`crate::platform::os_str_bytes`]),
//! so journals written either way read back the same.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::send::plan::{Part, Plan, Strategy};
use crate::send::source::Source;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Journal {
    pub id: String,
    #[serde(with = "exact_path")]
    pub source: PathBuf,
    pub dest: String,
    #[serde(with = "exact_path")]
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
    /// Direct writes: the parts verified on the server so far (by index).
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub verified: std::collections::BTreeSet<usize>,
    /// A release: every file's name on the server and size, in the order of the
    /// parts (`source` is then the first file, `dest` says how many there are).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<(String, u64)>,
}

/// A path as JSON without loss: a string when it is UTF-8, else its bytes in base64.
mod exact_path {
    use crate::platform::{os_str_bytes, os_string_from_bytes};
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::path::{Path, PathBuf};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Bytes { base64: String },
    }

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    pub fn serialize<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        match path.to_str() {
            Some(text) => Repr::Text(text.to_string()),
            None => Repr::Bytes {
                base64: B64.encode(os_str_bytes(path.as_os_str())),
            },
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        Ok(match Repr::deserialize(d)? {
            Repr::Text(text) => PathBuf::from(text),
            Repr::Bytes { base64 } => {
                let bytes = B64.decode(base64).map_err(serde::de::Error::custom)?;
                PathBuf::from(
                    os_string_from_bytes(bytes)
                        .ok_or_else(|| serde::de::Error::custom("not a path of this system"))?,
                )
            }
        })
    }
}

/// Whether `id` has the shape of an upload id (16 lowercase hex digits). Ids read back
/// from the journal or given to `relayup clean` are checked before they reach a path
/// or a remote command.
pub fn valid_upload_id(id: &str) -> bool {
    id.len() == 16 && id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
}

pub fn dir() -> Result<PathBuf> {
    Ok(crate::platform::state_base()?.join("relayup"))
}

fn path(id: &str) -> Result<PathBuf> {
    Ok(dir()?.join(file_name(id)))
}

fn file_name(id: &str) -> String {
    format!("{id}.json")
}

impl Journal {
    pub fn new(id: &str, source: &Source, config: &Path, plan: &Plan) -> Journal {
        let first = source
            .files
            .first()
            .map(|f| f.path.clone())
            .unwrap_or_default();
        Journal {
            id: id.to_string(),
            source: std::fs::canonicalize(&first).unwrap_or(first),
            dest: source.label(),
            config: std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf()),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            size: plan.size,
            equal: plan.strategy == Strategy::Equal,
            parts: plan.parts.iter().map(|p| (p.offset, p.len)).collect(),
            owners: plan.owners.clone(),
            verified: Default::default(),
            files: source.layout(),
        }
    }

    /// The plan this journal recorded, if it still describes `source` exactly: its
    /// size and, for a release, its files.
    pub fn plan(&self, source: &Source) -> Option<Plan> {
        let size = source.size;
        if source.layout() != self.files {
            return None;
        }
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

    /// Writes the journal whole or not at all: into a temp file of its own in the same
    /// directory (two runs never share one, and one a crash leaves behind is removed
    /// or ignored: it does not end in `.json`), synced to disk, then renamed over the
    /// old one. A crash leaves the old journal or the new one, never half of one.
    pub fn save(&self) -> Result<()> {
        self.save_in(&dir()?)
    }

    fn save_in(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let final_path = dir.join(file_name(&self.id));
        let writing = || format!("writing {}", final_path.display());
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", self.id))
            .suffix(".tmp")
            .tempfile_in(dir)
            .with_context(writing)?;
        serde_json::to_writer_pretty(&mut tmp, self).with_context(writing)?;
        tmp.as_file().sync_all().with_context(writing)?;
        tmp.persist(&final_path).with_context(writing)?;
        // The rename itself is durable once the directory is synced; a journal that
        // is lost only costs a resume its plan, so a failure here is not an error.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
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
            .filter(|j: &Journal| valid_upload_id(&j.id))
            .collect();
        all.sort_by_key(|j| j.started);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ids_are_checked() {
        assert!(valid_upload_id("0123456789abcdef"));
        for bad in [
            "",
            "0123456789abcde",
            "0123456789ABCDEF",
            "../../../etc/x",
            "0123456789abcdeg",
        ] {
            assert!(!valid_upload_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn plan_round_trips_and_rejects_damage() {
        let plan = Plan::new(
            100,
            3,
            Strategy::Equal,
            None,
            crate::send::plan::MIN_GUIDED_PART,
        );
        let src = |size| Source::unchecked(Path::new("/x"), "d", size);
        let j = Journal::new("abc", &src(100), Path::new("/c"), &plan);
        let back = j.plan(&src(100)).unwrap();
        assert_eq!(back.parts, plan.parts);
        assert_eq!(back.strategy, Strategy::Equal);
        assert!(
            j.plan(&src(101)).is_none(),
            "a different size is a different file"
        );
        let mut gap = j.clone();
        gap.parts[1].0 += 1;
        assert!(gap.plan(&src(100)).is_none());
    }

    #[test]
    fn save_replaces_the_journal_whole_and_leaves_no_temp_file() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("relayup");
        let id = "00112233aabbccdd";
        let plan = Plan::new(
            100,
            2,
            Strategy::Equal,
            None,
            crate::send::plan::MIN_GUIDED_PART,
        );
        let src = Source::unchecked(Path::new("/x"), "d", 100);
        let j = Journal::new(id, &src, Path::new("/c"), &plan);
        j.save_in(&dir).unwrap();
        let mut again = j.clone();
        again.dest = "e".into();
        again.save_in(&dir).unwrap();
        let text = std::fs::read_to_string(dir.join(format!("{id}.json"))).unwrap();
        let back: Journal = serde_json::from_str(&text).unwrap();
        assert_eq!(back.dest, "e");
        assert_eq!(back.plan(&src).unwrap().parts, plan.parts);
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [format!("{id}.json")]);
    }

    #[test]
    fn paths_that_are_not_utf8_round_trip_and_old_journals_still_read() {
        let plan = Plan::new(
            10,
            1,
            Strategy::Adaptive,
            None,
            crate::send::plan::MIN_GUIDED_PART,
        );
        let odd = PathBuf::from(crate::platform::not_unicode("/tmp/caf\u{e9} "));
        let j = Journal::new(
            "abc",
            &Source::unchecked(&odd, "ok.bin", 10),
            Path::new("/c.toml"),
            &plan,
        );
        let text = serde_json::to_string(&j).unwrap();
        assert!(text.contains("\"source\":{\"base64\":"), "{text}");
        assert!(text.contains("\"config\":\"/c.toml\""), "{text}");
        let back: Journal = serde_json::from_str(&text).unwrap();
        assert_eq!(back.source, odd);
        assert_eq!(back.config, Path::new("/c.toml"));

        // As journals have always been written: plain strings.
        let old = r#"{"id":"abc","source":"/home/u/big.iso","dest":"big.iso",
            "config":"/home/u/.config/relayup/peers.toml","started":1,"size":10,
            "equal":false,"parts":[[0,10]]}"#;
        let j: Journal = serde_json::from_str(old).unwrap();
        assert_eq!(j.source, Path::new("/home/u/big.iso"));
        assert!(j
            .plan(&Source::unchecked(Path::new("/x"), "big.iso", 10))
            .is_some());
        assert!(serde_json::to_string(&j)
            .unwrap()
            .contains("\"source\":\"/home/u/big.iso\""));
    }
}
