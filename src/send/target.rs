//! What one send sends where, resolved once from the command line and the config
//! before anything touches the network: the source and its stamp, the destination
//! name, the plan's strategy, the settings with the command's flags applied, and the
//! upload id that names its temp data.

use anyhow::{anyhow, bail, Context, Result};
use md5::{Digest, Md5};
use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::plan::{Plan, SmallFiles, Strategy};
pub use super::source::stamp;
use super::source::Source;
use crate::cli::{SendArgs, StrategyArg, VerifyArg};
use crate::config::{self, AssemblyKind, Settings};
use crate::events::{self, Event};
use crate::progress::{self, Mode};
use crate::server::direct::Verify;
use crate::size::{parse_rate, parse_size};

/// Everything a send needs that does not change while it runs.
pub struct Target {
    /// The config, with `--peers`, `--bwlimit`, `--stall-timeout` and
    /// `--accept-new-host-keys` applied.
    pub settings: Settings,
    /// What is sent: one file, or a release's files (each with its name on the
    /// server and what it looked like at the start, checked again before its
    /// rename).
    pub source: Arc<Source>,
    /// The name on the server, inside the upload directory (a release: how many
    /// files, for messages).
    pub dest: String,
    /// `--atomic-release`: publish a release's files only all together.
    pub atomic: bool,
    /// Every file's SHA-256 is computed too (a `sha256sum` manifest).
    pub sha256: bool,
    pub strategy: Strategy,
    /// `--part-size` for `adaptive`.
    pub part_size: Option<u64>,
    /// `--overwrite`: replace a regular file under `dest`.
    pub overwrite: bool,
    /// `--retry-for`: how long a server outage is waited out.
    pub retry_for: Duration,
    /// `--verify`: how direct writes are checked.
    pub verify: Verify,
    /// How progress and results are shown.
    pub mode: Mode,
}

impl Target {
    /// Resolves the command line; the peers in `exclude` are left out (a second round
    /// after parts they reported were bad). Errors here are usage errors.
    pub fn resolve(args: &SendArgs, exclude: &[String]) -> Result<Target> {
        let settings = settings(args, exclude)?;
        let source = if args.items.is_empty() {
            File::open(&args.file)
                .with_context(|| format!("{}: cannot open it for reading", args.file.display()))?;
            let dest = match (&args.dest_path, &args.dest) {
                (Some(path), _) => path.clone(),
                (None, Some(d)) => validate_dest(d)?,
                (None, None) => validate_dest(args.file.file_name().ok_or_else(|| {
                    anyhow!("{} has no file name; pass --dest", args.file.display())
                })?)?,
            };
            Source::single(&args.file, &dest)?
        } else {
            Source::release(&args.items)?
        };
        let strategy = match args.strategy {
            StrategyArg::Adaptive => Strategy::Adaptive,
            StrategyArg::Equal if source.is_release() => bail!(
                "--strategy equal cuts one file into one share per host; a release of several files \
                 is sent with the shared queue (adaptive): leave --strategy out"
            ),
            StrategyArg::Equal => Strategy::Equal,
        };
        let part_size = part_size(args.part_size.as_deref(), strategy)?;
        let mut settings = settings;
        let hosts = settings.peers.len() + 1;
        if strategy == Strategy::Adaptive
            && hosts > 1
            && Plan::for_source(
                &source,
                hosts,
                strategy,
                part_size,
                small_files(settings.assembly),
                crate::send::plan::MIN_GUIDED_PART,
            )
            .parts
            .len()
                <= 1
        {
            // One part: a peer could only take it from this machine, after logging
            // in and starting its relay. This machine sends it at once.
            settings.peers.clear();
        }
        Ok(Target {
            settings,
            dest: source.label(),
            source: Arc::new(source),
            atomic: args.atomic_release,
            sha256: args.sha256,
            strategy,
            part_size,
            overwrite: args.overwrite,
            retry_for: Duration::from_secs(args.retry_for),
            verify: match args.verify {
                VerifyArg::Auto => Verify::Auto,
                VerifyArg::Server => Verify::Server,
                VerifyArg::ReadBack => Verify::ReadBack,
                VerifyArg::None => Verify::None,
            },
            mode: Mode::choose(args.json, args.no_progress),
        })
    }

    /// The hosts' names: this machine (`local`), then the peers in config order.
    pub fn host_names(&self) -> Vec<String> {
        std::iter::once("local".to_string())
            .chain(self.settings.peers.iter().map(|p| p.login.name.clone()))
            .collect()
    }

    /// Same source, destination and server give the same id, so a re-run finds its
    /// parts.
    pub fn upload_id(&self) -> String {
        let mut h = Md5::new();
        for f in &self.source.files {
            let canonical = std::fs::canonicalize(&f.path).unwrap_or_else(|_| f.path.clone());
            h.update(canonical.as_os_str().as_encoded_bytes());
            h.update(f.stamp.size.to_le_bytes());
            if self.source.is_release() {
                // Not the times: a release one of whose files changed during a send
                // is sent again under the same id, and finds what it sent before
                // (each part is proved again before it counts).
                h.update(f.dest.as_bytes());
                h.update([0]);
                continue;
            }
            if let Some(t) = f
                .stamp
                .mtime
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            {
                h.update(t.as_nanos().to_le_bytes());
            }
        }
        let s = &self.settings;
        let merge_dir = s.merge.as_ref().map_or("", |m| m.dir.as_str());
        for part in [
            &self.dest,
            &s.server.host,
            &s.server.dir,
            merge_dir,
            s.assembly.name(),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        format!("{:x}", h.finalize())[..16].to_string()
    }

    /// `--dry-run`: the plan, as text or as one `plan` event.
    pub fn print_plan(&self, id: &str) {
        let hosts = self.host_names();
        // Without a connection, as for a server beyond a LAN (see `smallest_part`).
        let plan = self.plan(hosts.len(), crate::send::plan::MIN_GUIDED_PART);
        let server = &self.settings.server;
        let temp_dir = crate::transport::temp_dir(&server.dir, id);
        if self.mode == Mode::Json {
            progress::emit(&Event::Plan(events::PlanEvent {
                file: self
                    .source
                    .files
                    .first()
                    .map(|f| f.path.display().to_string())
                    .unwrap_or_default(),
                dest: self.dest.clone(),
                dir: server.dir.clone(),
                server: format!("{}://{}:{}", server.scheme, server.host, server.port),
                bytes: self.source.size,
                upload_id: id.to_string(),
                temp_dir,
                strategy: plan.strategy,
                parts: events::PlanPart::list(&plan, &hosts),
                hosts,
            }));
            return;
        }
        if self.source.is_release() {
            print!("{}", self.describe_release(&plan, &hosts));
        } else {
            print!("{}", plan.describe(&hosts));
        }
        let dest = if self.source.is_release() {
            String::new()
        } else {
            self.dest.clone()
        };
        println!(
            "destination: {}/{dest} on {}://{}:{}",
            server.dir.trim_end_matches('/'),
            server.scheme,
            server.host,
            server.port
        );
        println!("upload id: {id} (temp dir {temp_dir})");
    }
}

/// Whether a release's small files share parts: where the server cuts them apart.
fn small_files(assembly: AssemblyKind) -> SmallFiles {
    match assembly {
        AssemblyKind::Merge => SmallFiles::Together,
        AssemblyKind::Direct => SmallFiles::Apart,
    }
}

impl Target {
    /// A new plan for the send, among `hosts` hosts; `smallest`: see
    /// [`crate::send::plan::smallest_part`].
    pub fn plan(&self, hosts: usize, smallest: u64) -> Plan {
        Plan::for_source(
            &self.source,
            hosts,
            self.strategy,
            self.part_size,
            self.small_files(),
            smallest,
        )
    }

    pub fn small_files(&self) -> SmallFiles {
        small_files(self.settings.assembly)
    }

    /// A release's plan, one line per file: its size, its parts and its name.
    fn describe_release(&self, plan: &Plan, hosts: &[String]) -> String {
        let mut parts = vec![Vec::new(); self.source.files.len()];
        for p in &plan.parts {
            for k in self.source.files_in(p) {
                parts[k].push(p.index);
            }
        }
        let mut out = format!(
            "plan: {} file(s), {} in {} part(s) in one shared queue (a file smaller than a part is one part; {})\nhosts ({}): {}\n",
            self.source.files.len(),
            crate::size::human(self.source.size),
            plan.parts.len(),
            match self.small_files() {
                SmallFiles::Together => "small files share parts",
                SmallFiles::Apart => "each small file is a part of its own, as direct writes upload every file apart",
            },
            hosts.len(),
            hosts.join(", ")
        );
        for (f, ps) in self.source.files.iter().zip(&parts) {
            let which = match (ps.first(), ps.last()) {
                (Some(a), Some(b)) if a == b => format!("part {a}"),
                (Some(a), Some(b)) => format!("parts {a}-{b}"),
                _ => "empty".to_string(),
            };
            out.push_str(&format!(
                "  {:>10}  {which:<14}  {}\n",
                crate::size::human(f.size()),
                f.dest
            ));
        }
        out
    }
}

/// `--part-size`, which only `adaptive` takes.
fn part_size(text: Option<&str>, strategy: Strategy) -> Result<Option<u64>> {
    let Some(s) = text else { return Ok(None) };
    let v = parse_size(s).context("--part-size")?;
    if v == 0 {
        bail!("--part-size must be at least 1 byte");
    }
    if strategy == Strategy::Equal {
        bail!("--part-size applies to --strategy adaptive; equal makes one part per host");
    }
    Ok(Some(v))
}

/// The config with the send's flags applied: `--no-peers`, `--peers`, the peers in
/// `exclude` left out, `--stall-timeout`, `--accept-new-host-keys`, the rate limits.
pub fn settings(args: &SendArgs, exclude: &[String]) -> Result<Settings> {
    let path = config::config_path(args.config.as_deref())?;
    let mut settings = config::load(&path)?;
    if args.no_peers {
        settings.peers.clear();
    }
    if let Some(names) = &args.peers {
        settings.keep_peers(names)?;
    }
    settings.peers.retain(|p| !exclude.contains(&p.login.name));
    settings.io_timeout = Duration::from_secs(args.stall_timeout);
    settings.known_hosts.accept_new = args.accept_new_host_keys;
    let rate = |flag: &str, text: &Option<String>| {
        text.as_deref()
            .map(|t| parse_rate(t).with_context(|| format!("{flag} {t}")))
            .transpose()
    };
    settings.server.bwlimit = rate("--bwlimit", &args.bwlimit)?;
    settings.bwlimit_total = rate("--bwlimit-total", &args.bwlimit_total)?;
    Ok(settings)
}

/// The server-side name: one plain file name inside the upload directory.
pub fn validate_dest(name: &std::ffi::OsStr) -> Result<String> {
    let s = name.to_str().ok_or_else(|| {
        anyhow!("destination name {name:?} is not valid UTF-8; pass --dest with a UTF-8 name")
    })?;
    let bad = |why: &str| {
        Err(anyhow!(
            "destination name {s:?} {why}; pass --dest NAME with a plain file name"
        ))
    };
    if s.is_empty() {
        return bad("is empty");
    }
    if s == "." || s == ".." || s.contains('/') {
        return bad("must stay inside the upload directory (no '/', '.' or '..')");
    }
    if s.contains(['\r', '\n', '\0']) {
        return bad("contains a line break or NUL");
    }
    if s.starts_with(crate::server::names::TEMP_PREFIX) {
        return bad("uses relayup's own temp prefix");
    }
    if s.len() > 255 {
        return bad("is longer than 255 bytes");
    }
    Ok(s.to_string())
}
