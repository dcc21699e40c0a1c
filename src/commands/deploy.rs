//! `relayup peers deploy`: copy this very binary (or `--binary PATH`) to peers that
//! lack relayup or run another version, into `~/.local/bin/relayup` (Windows:
//! `%LOCALAPPDATA%\relayup\relayup.exe`), when their OS and architecture match.
//! Nothing runs on a peer but relayup: the rest is SFTP.

use anyhow::{anyhow, bail, Context, Result};
use ssh2::Session;
use std::fs::File;
use std::path::Path;
use std::process::ExitCode;

use crate::config::{self, Peer, DEPLOY_PATH, WINDOWS_DEPLOY_PATH};
use crate::error::{with_code, Code};
use crate::events::DeployRow;
use crate::remote::peer::PeerLink;
use crate::remote::ssh::{self, Trust};
use crate::transport::sftp::write_file;
use crate::transport::Body;

/// What deploy did for one peer.
struct Row {
    name: String,
    address: String,
    /// Its platform, in `uname -sm` spelling.
    os: Option<String>,
    /// `relayup --version` there before, if it ran.
    before: Option<String>,
    /// `installed`, `up to date`, or empty when it failed.
    action: &'static str,
    problem: Option<String>,
    /// Said even when it worked.
    note: Option<String>,
}

/// The platform this binary was built for, spelled as `uname -sm` spells it (e.g.
/// `Linux x86_64`), to compare with a peer's. The build target, not this machine's
/// kernel, is what decides where a copy runs: a 32-bit build on a 64-bit kernel is
/// still a 32-bit build.
pub fn local_os() -> String {
    uname_spelling(
        std::env::consts::OS,
        std::env::consts::ARCH,
        cfg!(target_endian = "little"),
    )
}

/// Rust's names for an OS and an architecture (`std::env::consts`) in `uname -s` and
/// `uname -m` spelling. Names not listed pass through as they are.
fn uname_spelling(os: &str, arch: &str, little_endian: bool) -> String {
    let sysname = match os {
        "linux" | "android" => "Linux",
        "macos" | "ios" => "Darwin",
        "freebsd" => "FreeBSD",
        "netbsd" => "NetBSD",
        "openbsd" => "OpenBSD",
        "dragonfly" => "DragonFly",
        "solaris" | "illumos" => "SunOS",
        "windows" => "Windows",
        other => other,
    };
    let machine = match (sysname, arch) {
        // The BSDs say amd64 and macOS says arm64 where Linux says x86_64 and aarch64.
        ("FreeBSD" | "NetBSD" | "OpenBSD" | "DragonFly", "x86_64") => "amd64",
        ("Darwin", "aarch64") => "arm64",
        (_, "x86") => "i686",
        (_, "arm") => "armv7l",
        (_, "powerpc64") if little_endian => "ppc64le",
        (_, "powerpc64") => "ppc64",
        (_, "powerpc") => "ppc",
        (_, other) => other,
    };
    format!("{sysname} {machine}")
}

/// Whether a binary built for `ours` runs on a host whose `uname -sm` is `theirs`.
fn same_platform(ours: &str, theirs: &str) -> bool {
    let norm = |s: &str| {
        s.split_whitespace()
            .map(|w| match w {
                "amd64" => "x86_64",
                "arm64" => "aarch64",
                // One 32-bit x86 build runs on every one of these.
                "i386" | "i486" | "i586" => "i686",
                w => w,
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    norm(ours) == norm(theirs)
}

fn deploy_one(
    p: &Peer,
    known_hosts: &crate::config::KnownHosts,
    ours: &Binary,
    force: bool,
) -> Row {
    let mut row = Row {
        name: p.login.name.clone(),
        address: format!("{}@{}:{}", p.login.user, p.login.host, p.login.port),
        os: None,
        before: None,
        action: "",
        problem: None,
        note: None,
    };
    if let Err(e) = install(p, known_hosts, ours, force, &mut row) {
        row.problem = Some(format!("{e:#}"));
    }
    row
}

fn install(
    p: &Peer,
    known_hosts: &crate::config::KnownHosts,
    ours: &Binary,
    force: bool,
    row: &mut Row,
) -> Result<()> {
    let want = format!("relayup {}", env!("CARGO_PKG_VERSION"));
    let session = ssh::connect(
        &p.login,
        Trust::KnownHosts(known_hosts),
        None,
        crate::config::DEFAULT_IO_TIMEOUT,
    )?;
    let sftp = session.sftp().context("starting SFTP on the peer")?;
    let os = look(known_hosts, &sftp, p, row)?;
    if row.before.as_deref() == Some(want.as_str()) && !force {
        row.action = "up to date";
        return Ok(());
    }
    if !same_platform(&ours.platform, &os) {
        bail!(
            "this peer is {os} and {} is for {}: build relayup for {os} and pass it with --binary PATH \
             (or `cargo install --path .` from the same source on that machine)",
            ours.path.display(),
            ours.platform
        );
    }
    let dest = deploy_path(&os);
    // Upload under a temporary name, prove it runs there, then rename into place: a
    // binary that does not start (an older C library, say) never replaces a working one.
    let tmp = upload(&sftp, &ours.path, dest)?;
    put_in_place(&session, &sftp, &tmp, dest, &want)?;
    row.action = "installed";
    row.note = configured_elsewhere(known_hosts, p, &want);
    Ok(())
}

/// Where deploy puts relayup on a peer whose `uname -sm` is `os`, relative to the
/// home directory (where SFTP and commands start).
fn deploy_path(os: &str) -> &'static str {
    if os.starts_with("Windows") {
        WINDOWS_DEPLOY_PATH
    } else {
        DEPLOY_PATH
    }
}

/// The platform and the relayup version there: from its relay's greeting if one
/// starts, else the platform from SFTP alone (nothing is run on the peer).
fn look(
    known_hosts: &crate::config::KnownHosts,
    sftp: &ssh2::Sftp,
    p: &Peer,
    row: &mut Row,
) -> Result<String> {
    if let Ok(link) = PeerLink::connect(p, known_hosts, crate::config::DEFAULT_IO_TIMEOUT) {
        row.before = Some(format!("relayup {}", link.version));
        row.os = Some(link.platform.clone());
        link.close();
        return Ok(row.os.clone().unwrap_or_default());
    }
    let os = sftp_platform(sftp)?;
    row.os = Some(os.clone());
    Ok(os)
}

/// A peer's platform in `uname -sm` spelling, read over SFTP: Windows' OpenSSH names
/// the home directory `/C:/…`; elsewhere the header of `/bin/sh` tells.
fn sftp_platform(sftp: &ssh2::Sftp) -> Result<String> {
    let home = sftp
        .realpath(Path::new("."))
        .context("asking the peer's SFTP server for its home directory")?;
    let home = home.to_string_lossy();
    let b = home.as_bytes();
    if b.len() >= 3 && b[0] == b'/' && b[1].is_ascii_alphabetic() && b[2] == b':' {
        return Ok("Windows x86_64".into());
    }
    let mut head = [0u8; 64];
    let mut f = sftp
        .open(Path::new("/bin/sh"))
        .context("reading /bin/sh's header over SFTP to tell the peer's platform")?;
    let n = std::io::Read::read(&mut f, &mut head)?;
    binary_platform(&head[..n])
        .ok_or_else(|| anyhow!("cannot tell the peer's platform from its /bin/sh"))
}

/// The platform a program was built for, from its first bytes (ELF, Mach-O or PE),
/// in `uname -sm` spelling.
fn binary_platform(head: &[u8]) -> Option<String> {
    if head.starts_with(b"\x7fELF") && head.len() >= 20 {
        let little = head[5] == 1;
        let machine = if little {
            u16::from_le_bytes([head[18], head[19]])
        } else {
            u16::from_be_bytes([head[18], head[19]])
        };
        let os = match head[7] {
            9 => "FreeBSD",
            12 => "OpenBSD",
            2 => "NetBSD",
            _ => "Linux",
        };
        let arch = match (machine, head[4]) {
            (0x3e, _) => "x86_64",
            (0xb7, _) => "aarch64",
            (0x03, _) => "i686",
            (0x28, _) => "armv7l",
            (0xf3, _) => "riscv64",
            (0x15, 2) if little => "ppc64le",
            (0x15, _) => "ppc64",
            (0x16, _) => "s390x",
            _ => return None,
        };
        let arch = match (os, arch) {
            ("FreeBSD" | "NetBSD" | "OpenBSD", "x86_64") => "amd64",
            (_, a) => a,
        };
        return Some(format!("{os} {arch}"));
    }
    if head.starts_with(b"MZ") && head.len() >= 0x40 {
        // The PE header's offset is at 0x3c; its machine field follows "PE\0\0".
        let at = u32::from_le_bytes([head[0x3c], head[0x3d], head[0x3e], head[0x3f]]) as usize;
        let machine = head.get(at + 4..at + 6)?;
        if head.get(at..at + 4)? != b"PE\0\0" {
            return None;
        }
        let arch = match u16::from_le_bytes([machine[0], machine[1]]) {
            0x8664 => "x86_64",
            0xaa64 => "aarch64",
            0x014c => "i686",
            _ => return None,
        };
        return Some(format!("Windows {arch}"));
    }
    let magic = u32::from_be_bytes(head.get(..4)?.try_into().ok()?);
    match magic {
        0xcffa_edfe | 0xcafe_babe => Some("Darwin arm64".into()),
        _ => None,
    }
}

/// The binary deploy copies: this one, or `--binary PATH` (a build for another
/// platform), and the platform it is for.
struct Binary {
    path: std::path::PathBuf,
    platform: String,
}

impl Binary {
    fn of(given: Option<&Path>) -> Result<Binary> {
        let Some(path) = given else {
            let path = std::env::current_exe().context("finding this relayup's own binary")?;
            return Ok(Binary {
                path,
                platform: local_os(),
            });
        };
        let mut head = vec![0u8; 4096];
        let n = std::io::Read::read(
            &mut File::open(path).with_context(|| format!("--binary {}", path.display()))?,
            &mut head,
        )?;
        head.truncate(n);
        let platform = binary_platform(&head).ok_or_else(|| {
            anyhow!(
                "--binary {}: not a program relayup can tell the platform of (an ELF or PE build of relayup)",
                path.display()
            )
        })?;
        Ok(Binary {
            path: path.to_path_buf(),
            platform,
        })
    }
}

/// Copies `binary` to a temporary name next to `dest` on the peer (creating its
/// directory); returns that name, relative to the peer's home.
fn upload(sftp: &ssh2::Sftp, binary: &Path, dest: &str) -> Result<String> {
    let mut src = File::open(binary).with_context(|| format!("opening {}", binary.display()))?;
    let len = src.metadata()?.len();
    let dir = Path::new(dest).parent().expect("a deploy path has a dir");
    let mut made = std::path::PathBuf::new();
    for part in dir.components() {
        made.push(part);
        if sftp.stat(&made).is_err() {
            sftp.mkdir(&made, 0o755)
                .map_err(|e| anyhow!("cannot create ~/{} there: {e}", made.display()))?;
        }
    }
    // A Windows program must end in .exe to run.
    let tmp = match dest.strip_suffix(".exe") {
        Some(stem) => format!("{stem}.new.{}.exe", std::process::id()),
        None => format!("{dest}.new.{}", std::process::id()),
    };
    let body = Body {
        src: &mut src,
        len,
        pace: None,
        progress: &mut |_| {},
    };
    write_file(sftp, Path::new(&tmp), body)
        .with_context(|| format!("copying {} to ~/{tmp}", binary.display()))?;
    Ok(tmp)
}

/// Makes the uploaded copy executable, checks that it prints `want`, and renames it
/// to `dest`, all over SFTP but for running the copy itself; a copy that does not
/// run is removed.
fn put_in_place(
    session: &Session,
    sftp: &ssh2::Sftp,
    tmp: &str,
    dest: &str,
    want: &str,
) -> Result<()> {
    let gone = |e: anyhow::Error| {
        let _ = sftp.unlink(Path::new(tmp));
        e
    };
    sftp.setstat(
        Path::new(tmp),
        ssh2::FileStat {
            size: None,
            uid: None,
            gid: None,
            perm: Some(0o755),
            atime: None,
            mtime: None,
        },
    )
    .map_err(|e| gone(anyhow!("making ~/{tmp} executable: {e}")))?;
    // cmd.exe takes no `/` in a program's path.
    let program = if dest.ends_with(".exe") {
        tmp.replace('/', "\\")
    } else {
        tmp.to_string()
    };
    let got = run_version(session, &program).map_err(gone)?;
    if got != want {
        return Err(gone(anyhow!(
            "the copied binary does not run there (it printed {got:?}); build relayup on that machine instead"
        )));
    }
    // SFTP v3 never renames over a file: the old one steps aside first, and comes
    // back if the new one cannot take its place.
    let (tmp, dest) = (Path::new(tmp), Path::new(dest));
    let aside = format!("{}.old.{}", dest.display(), std::process::id());
    let had = sftp.rename(dest, Path::new(&aside), None).is_ok();
    if let Err(e) = sftp.rename(tmp, dest, None) {
        if had {
            let _ = sftp.rename(Path::new(&aside), dest, None);
        }
        return Err(gone(anyhow!("installing ~/{} failed: {e}", dest.display())));
    }
    if had {
        let _ = sftp.unlink(Path::new(&aside));
    }
    Ok(())
}

/// Runs `program --version` on the peer (plain words: any login shell runs it) and
/// returns what it printed.
fn run_version(session: &Session, program: &str) -> Result<String> {
    let out = ssh::run_command(session, &format!("{program} --version"))?;
    if out.status != 0 {
        bail!(
            "the copied binary does not run there (exit {}: {}); build relayup on that machine instead",
            out.status,
            out.stderr.trim()
        );
    }
    Ok(out.stdout.trim().to_string())
}

/// The send runs what the config names: a note when that is not what was installed.
fn configured_elsewhere(
    known_hosts: &crate::config::KnownHosts,
    p: &Peer,
    want: &str,
) -> Option<String> {
    let running =
        PeerLink::connect(p, known_hosts, crate::config::DEFAULT_IO_TIMEOUT).map(|link| {
            let v = format!("relayup {}", link.version);
            link.close();
            v
        });
    match running {
        Ok(v) if v == want => None,
        running => Some(format!(
            "installed it, but a send would start {}, which is {}: remove that line from the config to use the installed one",
            p.relayup.as_deref().unwrap_or("relayup"),
            running.unwrap_or_else(|_| "not runnable".into())
        )),
    }
}

/// `--json`: one row per line; else the table.
fn report(rows: &[Row], as_json: bool) {
    if as_json {
        for r in rows {
            crate::progress::emit(&DeployRow {
                name: r.name.clone(),
                address: r.address.clone(),
                os: r.os.clone(),
                before: r.before.clone(),
                action: (!r.action.is_empty()).then_some(r.action),
                ok: r.problem.is_none(),
                problem: r.problem.clone(),
                note: r.note.clone(),
            });
        }
    } else {
        println!(
            "{:<16} {:<32} {:<16} {:<16} {:<10} problem",
            "peer", "address", "os", "before", "action"
        );
        for r in rows {
            println!(
                "{:<16} {:<32} {:<16} {:<16} {:<10} {}",
                r.name,
                r.address,
                r.os.as_deref().unwrap_or("-"),
                r.before.as_deref().unwrap_or("-"),
                if r.action.is_empty() { "-" } else { r.action },
                r.problem.as_deref().or(r.note.as_deref()).unwrap_or("")
            );
        }
    }
}

pub fn run(args: &crate::cli::DeployArgs) -> Result<ExitCode> {
    let (force, as_json) = (args.force, args.json);
    let path =
        config::config_path(args.config.as_deref()).map_err(|e| with_code(e, Code::Usage))?;
    let mut settings = config::load(&path).map_err(|e| with_code(e, Code::Usage))?;
    settings.known_hosts.accept_new = args.accept_new_host_keys;
    if let Some(names) = &args.peers {
        settings
            .keep_peers(names)
            .map_err(|e| with_code(e, Code::Usage))?;
    }
    let peers = &settings.peers;
    if peers.is_empty() {
        return Err(with_code(
            anyhow!(
                "{} has no [[peer]]: nothing to deploy to",
                settings.path.display()
            ),
            Code::Usage,
        ));
    }
    let ours = Binary::of(args.binary.as_deref()).map_err(|e| with_code(e, Code::Usage))?;
    let kh = &settings.known_hosts;
    let rows: Vec<Row> = std::thread::scope(|s| {
        let handles: Vec<_> = peers
            .iter()
            .map(|p| s.spawn(|| deploy_one(p, kh, &ours, force)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("deploy does not panic"))
            .collect()
    });
    report(&rows, as_json);
    let failed = rows.iter().filter(|r| r.problem.is_some()).count();
    if failed > 0 {
        return Err(anyhow!(
            "{failed} of {} peers could not get relayup {}",
            rows.len(),
            env!("CARGO_PKG_VERSION")
        ))
        .context(Code::Connect);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_match_across_spellings() {
        assert!(same_platform("Linux x86_64", "Linux x86_64"));
        assert!(same_platform("Linux x86_64", "Linux amd64"));
        assert!(same_platform("Darwin arm64", "Darwin aarch64"));
        assert!(!same_platform("Linux x86_64", "Linux aarch64"));
        assert!(!same_platform("Linux x86_64", "FreeBSD x86_64"));
        assert!(!same_platform("Linux x86_64", ""));
    }

    #[test]
    fn reads_the_platform_from_a_program_header() {
        // This very test binary, and the first bytes of builds for other platforms.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(binary_platform(&me[..4096]), Some(local_os()));
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        (elf[4], elf[5]) = (2, 1);
        elf[18..20].copy_from_slice(&0xb7u16.to_le_bytes());
        assert_eq!(binary_platform(&elf).as_deref(), Some("Linux aarch64"));
        let mut pe = vec![0u8; 0x100];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x84..0x86].copy_from_slice(&0x8664u16.to_le_bytes());
        assert_eq!(binary_platform(&pe).as_deref(), Some("Windows x86_64"));
        assert_eq!(binary_platform(b"#!/bin/sh\n"), None);
        assert_eq!(binary_platform(b""), None);
    }

    #[test]
    fn windows_peers_get_relayup_exe_under_local_app_data() {
        assert_eq!(deploy_path("Windows x86_64"), WINDOWS_DEPLOY_PATH);
        assert_eq!(deploy_path("Linux x86_64"), DEPLOY_PATH);
    }

    #[test]
    fn local_os_is_two_words() {
        assert_eq!(local_os().split_whitespace().count(), 2);
    }

    #[test]
    fn build_targets_in_uname_spelling() {
        for (os, arch, little, uname) in [
            ("linux", "x86_64", true, "Linux x86_64"),
            ("linux", "aarch64", true, "Linux aarch64"),
            ("linux", "x86", true, "Linux i686"),
            ("linux", "arm", true, "Linux armv7l"),
            ("linux", "riscv64", true, "Linux riscv64"),
            ("linux", "powerpc64", true, "Linux ppc64le"),
            ("linux", "powerpc64", false, "Linux ppc64"),
            ("linux", "s390x", false, "Linux s390x"),
            ("macos", "aarch64", true, "Darwin arm64"),
            ("macos", "x86_64", true, "Darwin x86_64"),
            ("freebsd", "x86_64", true, "FreeBSD amd64"),
            ("openbsd", "aarch64", true, "OpenBSD aarch64"),
            ("illumos", "x86_64", true, "SunOS x86_64"),
        ] {
            assert_eq!(uname_spelling(os, arch, little), uname, "{os} {arch}");
        }
    }

    #[test]
    fn this_build_matches_this_machine() {
        // Where `uname` runs, this build's spelling matches it (the tests run the
        // binary they built, on the machine they built it for).
        let Ok(out) = std::process::Command::new("uname").arg("-sm").output() else {
            return;
        };
        let theirs = String::from_utf8_lossy(&out.stdout);
        assert!(
            same_platform(&local_os(), theirs.trim()),
            "{} vs {theirs}",
            local_os()
        );
    }

    #[test]
    fn spellings_of_one_platform_match() {
        assert!(same_platform("Linux i686", "Linux i386"));
        assert!(same_platform("FreeBSD amd64", "FreeBSD x86_64"));
        assert!(!same_platform("Linux i686", "Linux x86_64"));
    }
}
