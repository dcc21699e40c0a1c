//! `relayup peers deploy`: copy this very binary to peers that lack relayup or run
//! another version, into `~/.local/bin/relayup`, when their OS and architecture match.

use anyhow::{anyhow, bail, Context, Result};
use ssh2::Session;
use std::fs::File;
use std::path::Path;
use std::process::ExitCode;

use crate::config::{self, Peer, DEPLOY_PATH};
use crate::error::{with_code, Code};
use crate::events::DeployRow;
use crate::remote::quote;
use crate::remote::ssh::{self, Trust};
use crate::transport::sftp::write_file;
use crate::transport::Body;

/// What deploy did for one peer.
struct Row {
    name: String,
    address: String,
    /// `uname -sm` there.
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

/// Parses the probe script's `os …` and `version …` lines.
fn parse_probe(out: &str) -> (Option<String>, Option<String>) {
    let mut os = None;
    let mut version = None;
    for line in out.lines() {
        if let Some(v) = line.strip_prefix("os ") {
            os = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("version ") {
            version = Some(v.trim().to_string());
        }
    }
    (os, version)
}

fn deploy_one(p: &Peer, known_hosts: &crate::config::KnownHosts, ours: &str, force: bool) -> Row {
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
    ours: &str,
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
    let os = look(&session, p, row)?;
    if row.before.as_deref() == Some(want.as_str()) && !force {
        row.action = "up to date";
        return Ok(());
    }
    if !same_platform(ours, &os) {
        bail!(
            "this peer is {os} and this machine is {ours}: install {want} built for {os} there \
             (e.g. `cargo install --path .` from the same source on that machine)"
        );
    }
    // Upload under a temporary name, prove it runs there, then rename into place: a
    // binary that does not start (an older C library, say) never replaces a working one.
    let tmp = upload(&session)?;
    put_in_place(&session, &tmp, &want)?;
    row.action = "installed";
    row.note = configured_elsewhere(&session, p, &want)?;
    Ok(())
}

/// Runs the probe script: the peer's `uname -sm` (returned, and put in the row with
/// the version of relayup that runs there now).
fn look(session: &Session, p: &Peer, row: &mut Row) -> Result<String> {
    let probe = format!(
        "printf 'os %s\\n' \"$(uname -sm)\"\n\
         v=$({} --version 2>/dev/null) && printf 'version %s\\n' \"$v\"\n\
         exit 0",
        p.invocation()
    );
    let out = ssh::run(session, &probe)?;
    let (os, before) = parse_probe(&out.stdout);
    row.os = os.clone();
    row.before = before.clone();
    os.ok_or_else(|| anyhow!("cannot run uname there: {}", out.stderr.trim()))
}

/// Copies this very binary to a temporary name next to [`DEPLOY_PATH`] on the peer
/// (creating its directory); returns that name, relative to the peer's home.
fn upload(session: &Session) -> Result<String> {
    let exe = std::env::current_exe().context("finding this relayup's own binary")?;
    let mut src = File::open(&exe).with_context(|| format!("opening {}", exe.display()))?;
    let len = src.metadata()?.len();
    let sftp = session.sftp().context("starting SFTP on the peer")?;
    let dir = Path::new(DEPLOY_PATH)
        .parent()
        .expect("DEPLOY_PATH has a dir");
    let mut made = std::path::PathBuf::new();
    for part in dir.components() {
        made.push(part);
        if sftp.stat(&made).is_err() {
            sftp.mkdir(&made, 0o755)
                .map_err(|e| anyhow!("cannot create ~/{} there: {e}", made.display()))?;
        }
    }
    let tmp = format!("{DEPLOY_PATH}.new.{}", std::process::id());
    let body = Body {
        src: &mut src,
        len,
        pace: None,
        progress: &mut |_| {},
    };
    write_file(&sftp, Path::new(&tmp), body)
        .with_context(|| format!("copying {} to ~/{tmp}", exe.display()))?;
    Ok(tmp)
}

/// Makes the uploaded copy executable, checks that it prints `want`, and renames it
/// to [`DEPLOY_PATH`]; a copy that does not run is removed.
fn put_in_place(session: &Session, tmp: &str, want: &str) -> Result<()> {
    let script = format!(
        "cd || exit 1\n\
         chmod 755 {tmp} || exit 1\n\
         v=$(./{tmp} --version 2>&1) || {{ rm -f {tmp}; echo \"$v\" >&2; exit 20; }}\n\
         [ \"$v\" = {want} ] || {{ rm -f {tmp}; echo \"it printed $v\" >&2; exit 20; }}\n\
         mv -f -- {tmp} {dest} || exit 1\n",
        tmp = quote::sh(tmp),
        want = quote::sh(want),
        dest = quote::sh(DEPLOY_PATH),
    );
    let out = ssh::run(session, &script)?;
    match out.status {
        0 => Ok(()),
        20 => bail!(
            "the copied binary does not run there ({}); build relayup on that machine instead",
            out.stderr.trim()
        ),
        s => bail!(
            "installing ~/{DEPLOY_PATH} failed (exit {s}): {}",
            out.stderr.trim()
        ),
    }
}

/// The send runs what `invocation()` names: a note when that is not what was
/// installed.
fn configured_elsewhere(session: &Session, p: &Peer, want: &str) -> Result<Option<String>> {
    let check = ssh::run(session, &format!("{} --version", p.invocation()))?;
    if check.stdout.trim() == want {
        return Ok(None);
    }
    Ok(Some(format!(
        "installed ~/{DEPLOY_PATH}, but this peer is configured with relayup = {:?}, which is {}: \
         remove that line from the config to use the installed one",
        p.relayup.as_deref().unwrap_or("relayup"),
        if check.status == 0 {
            check.stdout.trim().to_string()
        } else {
            "not runnable".into()
        }
    )))
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
    let ours = local_os();
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
    fn parses_the_probe() {
        assert_eq!(
            parse_probe("os Linux x86_64\nversion relayup 0.1.0\n"),
            (Some("Linux x86_64".into()), Some("relayup 0.1.0".into()))
        );
        assert_eq!(
            parse_probe("os Linux aarch64\n"),
            (Some("Linux aarch64".into()), None)
        );
        assert_eq!(parse_probe(""), (None, None));
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
