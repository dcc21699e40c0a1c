//! `relayup send PATH...` with several paths or a directory: the files to send and
//! where each lands on the server, as `scp -r` places them (`dist/` puts `dist/…`
//! there), and the checksum manifest written at the end.
//!
//! Rules: a directory is walked recursively, in name order; a symbolic link named on
//! the command line is followed; inside a directory a link to a regular file is
//! followed (its content goes under the link's name) and a link to a directory is
//! skipped with a warning (no loops); a dangling link, a device, a FIFO or a socket is
//! an error naming it. Every component of a server path must be a plain name (see
//! [`validate_component`]).

use anyhow::{anyhow, bail, Context, Result};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use std::process::ExitCode;

use super::target::validate_dest;
use crate::cli::{ManifestHash, SendArgs};
use crate::error::{with_code, Code};
use crate::events::Event;
use crate::progress;

/// One file of a release: where it is here and its path on the server, relative to
/// the upload directory (components joined with `/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub source: PathBuf,
    pub dest: String,
}

/// What a send of several paths sends.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Release {
    /// The files, in command-line order, each directory's in name order.
    pub items: Vec<Item>,
    /// Every directory to create on the server (parents before children), empty ones
    /// included.
    pub dirs: Vec<String>,
    /// What was left out, for warnings.
    pub skipped: Vec<String>,
}

/// One component of a server path: a plain name, as for `--dest`.
pub fn validate_component(name: &OsStr, whole: &Path) -> Result<String> {
    validate_dest(name)
        .with_context(|| format!("{}: cannot be sent under that name", whole.display()))
}

/// Expands the command line's paths.
pub fn expand(paths: &[PathBuf]) -> Result<Release> {
    let mut r = Release::default();
    for path in paths {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("{}: cannot read it", path.display()))?;
        let name = path
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_os_string()))
            .or_else(|| path.file_name().map(|n| n.to_os_string()))
            .ok_or_else(|| anyhow!("{} has no name to send it under", path.display()))?;
        let dest = validate_component(&name, path)?;
        if meta.is_dir() {
            r.dirs.push(dest.clone());
            walk(path, &dest, &mut r)?;
        } else if meta.is_file() {
            r.items.push(Item {
                source: path.clone(),
                dest,
            });
        } else {
            bail!("{} is not a regular file or a directory", path.display());
        }
    }
    let mut seen = std::collections::HashSet::new();
    for item in &r.items {
        if !seen.insert(item.dest.as_str()) {
            bail!(
                "two paths would land on the server as {}; send them separately",
                item.dest
            );
        }
    }
    Ok(r)
}

fn walk(dir: &Path, dest: &str, r: &mut Release) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list it", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("{}: cannot list it", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = validate_component(&e.file_name(), &path)?;
        let child = format!("{dest}/{name}");
        let lmeta = std::fs::symlink_metadata(&path)
            .with_context(|| format!("{}: cannot read it", path.display()))?;
        let meta = if lmeta.file_type().is_symlink() {
            let m = std::fs::metadata(&path).with_context(|| {
                format!(
                    "{}: a symbolic link to nothing that can be read",
                    path.display()
                )
            })?;
            if m.is_dir() {
                r.skipped.push(format!(
                    "{}: a symbolic link to a directory, not followed",
                    path.display()
                ));
                continue;
            }
            m
        } else {
            lmeta
        };
        if meta.is_dir() {
            r.dirs.push(child.clone());
            walk(&path, &child, r)?;
        } else if meta.is_file() {
            r.items.push(Item {
                source: path,
                dest: child,
            });
        } else {
            bail!(
                "{} is not a regular file (a device, FIFO or socket); remove it from what is sent",
                path.display()
            );
        }
    }
    Ok(())
}

/// The manifest's text in `md5sum -c` (or `sha256sum -c`) format: one `<sum>  <path>`
/// line per file, the path relative to the manifest's own directory (`manifest` is
/// its server path).
/// Names with a backslash are escaped as `md5sum` does (a leading `\`, `\\`).
pub fn manifest(manifest: &str, files: &[(String, String)]) -> String {
    let base = manifest.rsplit_once('/').map_or("", |(d, _)| d);
    let mut out = String::new();
    for (dest, md5) in files {
        let rel = if base.is_empty() {
            dest.as_str()
        } else {
            dest.strip_prefix(base)
                .and_then(|r| r.strip_prefix('/'))
                .unwrap_or(dest)
        };
        if rel.contains('\\') {
            out.push_str(&format!("\\{md5}  {}\n", rel.replace('\\', "\\\\")));
        } else {
            out.push_str(&format!("{md5}  {rel}\n"));
        }
    }
    out
}

/// Whether the manifest `m` lists SHA-256 sums (`--manifest-hash`, or by its name).
fn sha256_manifest(args: &SendArgs, m: &str) -> bool {
    match args.manifest_hash {
        ManifestHash::Md5 => false,
        ManifestHash::Sha256 => true,
        ManifestHash::Auto => m
            .rsplit('/')
            .next()
            .is_some_and(|name| name.to_ascii_lowercase().contains("sha256")),
    }
}

/// The manifest's server path: plain components, as any destination.
pub fn manifest_path(name: &OsStr) -> Result<String> {
    let s = name
        .to_str()
        .ok_or_else(|| anyhow!("--manifest {name:?} is not valid UTF-8"))?;
    s.split('/')
        .map(|c| validate_dest(OsStr::new(c)).context("--manifest"))
        .collect::<Result<Vec<_>>>()
        .map(|parts| parts.join("/"))
}

/// `relayup send` of several paths or a directory: the directories are made on the
/// server, then each file is sent and published on its own as soon as it is verified,
/// then the manifest, if asked for. A failure stops the release: the files already
/// published stay, and the same command resumes (finished files are "already there").
pub fn run(args: &SendArgs) -> Result<ExitCode> {
    let started = std::time::Instant::now();
    if args.dest.is_some() {
        return Err(anyhow!(
            "--dest names the file when one file is sent; with several paths or a directory every file keeps its name"
        ))
        .context(Code::Usage);
    }
    let release = expand(&args.paths).map_err(|e| with_code(e, Code::Usage))?;
    let manifest = args
        .manifest
        .as_deref()
        .map(manifest_path)
        .transpose()
        .map_err(|e| with_code(e, Code::Usage))?;
    if let Some(m) = &manifest {
        if release.items.iter().any(|i| &i.dest == m) {
            return Err(anyhow!("--manifest {m} is also one of the files sent"))
                .context(Code::Usage);
        }
    }
    for s in &release.skipped {
        progress::warn(s);
    }
    let json = progress::json();
    if !args.dry_run {
        let mut dirs = release.dirs.clone();
        if let Some((parent, _)) = manifest.as_deref().and_then(|m| m.rsplit_once('/')) {
            dirs.extend(parent_dirs(parent));
        }
        make_dirs(args, &dirs)?;
    }
    let n = release.items.len();
    let mut all = args.clone();
    all.items = release
        .items
        .iter()
        .map(|i| (i.source.clone(), i.dest.clone()))
        .collect();
    all.manifest = None;
    all.sha256 = manifest
        .as_deref()
        .is_some_and(|m| sha256_manifest(args, m));
    let reports = if all.items.is_empty() {
        Vec::new()
    } else {
        super::send_files(&all)?
    };
    if args.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    let (sent, there, bytes) = tally(&reports, json);
    if let Some(m) = &manifest {
        upload_manifest(args, m, &reports, all.sha256, json)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    if json {
        progress::emit(&Event::ReleaseDone {
            files: n,
            sent,
            already_there: there,
            bytes,
            manifest: manifest.clone(),
            seconds: (seconds * 100.0).round() / 100.0,
        });
    }
    eprintln!(
        "relayup: {n} file(s) on the server ({sent} sent, {there} already there), {} in {seconds:.1} s{}",
        crate::size::human(bytes),
        manifest.map(|m| format!(", checksums in {m}")).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// Files sent, files already there, bytes sent; a `file_done` event for each file
/// with `json` that did not have one when it was published.
fn tally(reports: &[super::FileReport], json: bool) -> (usize, usize, u64) {
    let (mut sent, mut there, mut bytes) = (0, 0, 0);
    for r in reports {
        if r.already_there {
            there += 1;
        } else {
            sent += 1;
            bytes += r.bytes;
        }
        if json && !r.announced {
            progress::emit(&Event::FileDone {
                path: r.dest.clone(),
                source: r.source.display().to_string(),
                bytes: r.bytes,
                md5: r.md5.clone(),
                already_there: r.already_there,
            });
        }
    }
    (sent, there, bytes)
}

/// Writes the manifest `m` of `reports` (SHA-256 sums with `sha256`, else MD5) and
/// sends it as one more file, published last.
fn upload_manifest(
    args: &SendArgs,
    m: &str,
    reports: &[super::FileReport],
    sha256: bool,
    json: bool,
) -> Result<()> {
    let sums: Vec<(String, String)> = reports
        .iter()
        .map(|r| {
            let sum = if sha256 {
                r.sha256.clone()
            } else {
                Some(r.md5.clone())
            };
            sum.map(|s| (r.dest.clone(), s))
                .ok_or_else(|| anyhow!("{}: no SHA-256 was computed", r.dest))
        })
        .collect::<Result<_>>()?;
    let mut tmp = tempfile::NamedTempFile::new().context("writing the manifest")?;
    std::io::Write::write_all(&mut tmp, manifest(m, &sums).as_bytes())
        .context("writing the manifest")?;
    if !json {
        eprintln!("relayup: manifest {m}");
    }
    let mut one = args.clone();
    one.file = tmp.path().to_path_buf();
    one.dest_path = Some(m.to_string());
    one.manifest = None;
    one.items = Vec::new();
    super::send_files(&one).with_context(|| format!("uploading the manifest {m}"))?;
    Ok(())
}

fn parent_dirs(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in path.match_indices('/') {
        out.push(path[..i].to_string());
    }
    out.push(path.to_string());
    out
}

/// Makes the release's directories on the server over an upload login (FTP `MKD`,
/// SFTP `mkdir`), so both kinds of assembly find them. Each must end up a directory
/// (over SFTP: a real one, not a symbolic link).
fn make_dirs(args: &SendArgs, dirs: &[String]) -> Result<()> {
    if dirs.is_empty() {
        return Ok(());
    }
    let settings = super::target::settings(args, &[]).map_err(|e| with_code(e, Code::Usage))?;
    let access = crate::transport::Access::of(&settings);
    let (mut conn, _) = crate::transport::open(&settings.server, "dirs", &access)
        .map_err(|e| with_code(e, Code::Connect))?;
    let base = settings.server.dir.trim_end_matches('/');
    for d in dirs {
        let full = format!("{base}/{d}");
        conn.make_dir(&full)
            .map_err(|e| with_code(e, Code::Transfer))?;
        if conn.kind(&full)? != crate::transport::Kind::Dir {
            return Err(anyhow!(
                "{}: {full} on the server is not a directory; remove it there or send under another name",
                conn.what()
            ))
            .context(Code::Usage);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(unix)]
    use std::fs;

    #[cfg(unix)] // symbolic links
    #[test]
    fn a_directory_lands_under_its_own_name_with_its_tree() {
        let t = tempfile::tempdir().unwrap();
        let dist = t.path().join("dist");
        fs::create_dir_all(dist.join("a/b")).unwrap();
        fs::create_dir_all(dist.join("empty")).unwrap();
        fs::write(dist.join("a/b/x.bin"), b"x").unwrap();
        fs::write(dist.join("with space 'q' ü"), b"").unwrap();
        fs::write(dist.join("z"), b"z").unwrap();
        std::os::unix::fs::symlink("z", dist.join("link-to-z")).unwrap();
        std::os::unix::fs::symlink("a", dist.join("link-to-a")).unwrap();
        let r = expand(&[PathBuf::from(format!("{}/", dist.display()))]).unwrap();
        let dests: Vec<&str> = r.items.iter().map(|i| i.dest.as_str()).collect();
        assert_eq!(
            dests,
            [
                "dist/a/b/x.bin",
                "dist/link-to-z",
                "dist/with space 'q' ü",
                "dist/z"
            ]
        );
        assert_eq!(r.dirs, ["dist", "dist/a", "dist/a/b", "dist/empty"]);
        assert_eq!(r.skipped.len(), 1, "{:?}", r.skipped);
        assert_eq!(r.items[1].source, dist.join("link-to-z"));
    }

    #[cfg(unix)] // symbolic links and a FIFO
    #[test]
    fn refuses_what_cannot_be_sent() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        fs::create_dir(&d).unwrap();
        std::os::unix::fs::symlink("nowhere", d.join("dangling")).unwrap();
        let err = expand(std::slice::from_ref(&d)).unwrap_err();
        assert!(format!("{err:#}").contains("dangling"), "{err:#}");
        fs::remove_file(d.join("dangling")).unwrap();
        let fifo = d.join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let err = expand(std::slice::from_ref(&d)).unwrap_err();
        assert!(format!("{err:#}").contains("not a regular file"), "{err:#}");
        fs::remove_file(&fifo).unwrap();
        fs::write(d.join(".relayup-x"), b"").unwrap();
        let err = expand(std::slice::from_ref(&d)).unwrap_err();
        assert!(format!("{err:#}").contains("temp prefix"), "{err:#}");
        fs::remove_file(d.join(".relayup-x")).unwrap();
        fs::write(d.join("new\nline"), b"").unwrap();
        assert!(expand(std::slice::from_ref(&d)).is_err());
        fs::remove_file(d.join("new\nline")).unwrap();
        // Two paths, one name on the server.
        let other = t.path().join("o");
        fs::create_dir(&other).unwrap();
        fs::write(other.join("f"), b"").unwrap();
        fs::write(t.path().join("f"), b"").unwrap();
        let err = expand(&[other.join("f"), t.path().join("f")]).unwrap_err();
        assert!(format!("{err:#}").contains("two paths"), "{err:#}");
    }

    #[test]
    fn manifest_is_md5sum_c_format_relative_to_its_dir() {
        let files = vec![
            ("dist/a.bin".to_string(), "0".repeat(32)),
            ("dist/b\\c".to_string(), "1".repeat(32)),
        ];
        assert_eq!(
            manifest("MD5SUMS", &files),
            format!(
                "{}  dist/a.bin\n\\{}  dist/b\\\\c\n",
                "0".repeat(32),
                "1".repeat(32)
            )
        );
        assert_eq!(
            manifest("dist/MD5SUMS", &files[..1]),
            format!("{}  a.bin\n", "0".repeat(32))
        );
        assert_eq!(
            manifest_path(OsStr::new("dist/MD5SUMS")).unwrap(),
            "dist/MD5SUMS"
        );
        assert!(manifest_path(OsStr::new("../MD5SUMS")).is_err());
        assert!(manifest_path(OsStr::new("/MD5SUMS")).is_err());
    }
}
