//! Hardening: file names that are not UTF-8, SIGTERM and a second Ctrl-C, a remote
//! command killed by a signal, a relay that cannot dump core, a system CA bundle as
//! `ca_file`.

use crate::harness::{
    edit_file, event, json_lines, md5_file, send_args, text, wait_until, Running, TestEnv, PART,
    PEER_USERS,
};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Bytes the peers (not this machine) uploaded, from a `done` event.
fn peer_bytes(done: &serde_json::Value) -> u64 {
    done["hosts"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| name.as_str() != "local")
        .map(|(_, h)| h["bytes"].as_u64().unwrap())
        .sum()
}

fn signal(run: &Running, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(run.child.id() as i32, sig) };
}

/// The command the interrupted send printed for its resume.
fn resume_hint(stderr: &str) -> String {
    let at = stderr
        .find("Run the same command again to resume: ")
        .unwrap_or_else(|| panic!("no resume command printed: {stderr}"));
    let rest = &stderr[at + "Run the same command again to resume: ".len()..];
    rest.lines().next().unwrap().to_string()
}

#[test]
fn a_source_name_that_is_not_utf8_is_sent_through_peers_interrupted_and_resumed() {
    let env = TestEnv::new(2);
    let config = env.write_config("c.toml", "ftp", &[]);
    let size = 20 * PART + 7;
    let odd = env
        .private
        .join(OsStr::from_bytes(b"caf\xe9 \xff'$(x).bin"));
    fs::rename(env.random_file("plain", size), &odd).unwrap();

    // The server name comes from --dest; without it the odd name is refused clearly.
    let mut no_dest = vec![OsString::from("send")];
    no_dest.extend(send_args(&odd, &config, &["--dry-run"]));
    let out = env.relayup(&no_dest);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not valid UTF-8; pass --dest"),
        "{}",
        text(&out)
    );

    let args = send_args(&odd, &config, &["--dest", "ok.bin", "--bwlimit", "1MiB"]);
    let run = env.spawn_send(&args);
    run.wait_parts(3, None);
    signal(&run, libc::SIGINT);
    let (status, _, stderr) = run.finish(Duration::from_secs(15));
    assert_eq!(status.code(), Some(130), "{stderr}");
    let hint = resume_hint(&stderr);
    assert!(
        hint.contains(r#"/caf'"$(printf '\351')"' '"$(printf '\377')"''\''$(x).bin'"#),
        "the odd bytes are quoted for a POSIX shell: {hint}"
    );
    wait_until("staged parts are removed", Duration::from_secs(10), || {
        env.staged_files().is_empty()
    });
    assert_eq!(env.temp_dirs().len(), 1, "server parts kept for the resume");

    // The journal keeps the name exactly; status shows it (lossily).
    let journals: Vec<String> = fs::read_dir(env.root.join("state/relayup"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| fs::read_to_string(p).unwrap())
        .collect();
    assert!(
        journals.len() == 1 && journals[0].contains("\"base64\""),
        "{journals:?}"
    );
    let out = env.relayup(&["status", "--json"]);
    let rows = json_lines(&out);
    assert_eq!(rows.len(), 1, "{}", text(&out));
    assert_eq!(rows[0]["dest"], "ok.bin");
    assert!(
        rows[0]["source"]
            .as_str()
            .unwrap()
            .ends_with("caf\u{fffd} \u{fffd}'$(x).bin"),
        "{}",
        rows[0]
    );
    let out = env.relayup(&["status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok.bin"),
        "{}",
        text(&out)
    );

    // The printed command itself resumes the send.
    let out = Command::new("sh")
        .arg("-c")
        .arg(&hint)
        .env_remove("RELAYUP_CONFIG")
        .env("XDG_STATE_HOME", env.root.join("state"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let events = json_lines(&out);
    assert!(
        event(&events, "start")["resumed_parts"].as_u64().unwrap() >= 1,
        "{events:?}"
    );
    assert!(
        peer_bytes(event(&events, "done")) > 0,
        "the peers carried parts: {events:?}"
    );
    assert_eq!(md5_file(&env.srv.join("ok.bin")), md5_file(&odd));
    env.assert_clean();
    let out = env.relayup(&["status", "--json"]);
    assert!(out.stdout.is_empty(), "journal removed: {}", text(&out));
}

#[test]
fn sigterm_cleans_up_like_ctrl_c_and_exits_143_then_the_same_command_resumes() {
    let env = TestEnv::new(2);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 24 * PART);
    let args = send_args(&file, &config, &["--bwlimit", "1MiB"]);
    let run = env.spawn_send(&args);
    run.wait_parts(3, None);
    let asked = Instant::now();
    signal(&run, libc::SIGTERM);
    let (status, _, stderr) = run.finish(Duration::from_secs(15));
    eprintln!("stopped {:?} after SIGTERM", asked.elapsed());
    assert_eq!(status.code(), Some(143), "{stderr}");
    let hint = resume_hint(&stderr);
    assert!(hint.contains("send") && hint.contains("--config"), "{hint}");
    wait_until("staged parts are removed", Duration::from_secs(10), || {
        env.staged_files().is_empty()
    });
    assert!(!env.srv.join("f").exists());
    assert_eq!(env.temp_dirs().len(), 1, "server parts kept for the resume");

    let (status, events, stderr) = env.spawn_send(&args).finish(Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
    assert!(
        event(&events, "start")["resumed_parts"].as_u64().unwrap() >= 1,
        "{events:?}"
    );
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
    env.assert_clean();
}

/// A listening port whose accept queue is full: connects to it hang until their
/// timeout, as to a host that drops packets.
struct BlackHole {
    fd: libc::c_int,
    port: u16,
    _fillers: Vec<std::net::TcpStream>,
}

impl BlackHole {
    fn new() -> BlackHole {
        // std's TcpListener has no backlog setting: a backlog of 0 fills at once.
        // SAFETY: plain socket calls on a socket this function owns.
        let (fd, port) = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            assert_eq!(
                libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len),
                0
            );
            assert_eq!(libc::listen(fd, 0), 0);
            let mut len = len;
            libc::getsockname(fd, &mut addr as *mut _ as *mut libc::sockaddr, &mut len);
            (fd, u16::from_be(addr.sin_port))
        };
        let to = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut fillers = Vec::new();
        loop {
            match std::net::TcpStream::connect_timeout(&to, Duration::from_millis(500)) {
                Ok(s) => fillers.push(s),
                Err(_) => break,
            }
            assert!(fillers.len() < 8, "the accept queue never fills");
        }
        BlackHole {
            fd,
            port,
            _fillers: fillers,
        }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        // SAFETY: closing the socket `new` opened.
        unsafe { libc::close(self.fd) };
    }
}

#[test]
fn a_second_signal_during_the_clean_up_exits_at_once() {
    let env = TestEnv::new(0);
    let hole = BlackHole::new();
    let config = env.write_config("c.toml", "ftp", &[]);
    // The merge login then hangs in its connect for the 10 s connect timeout, which
    // no interrupt cuts short: the first signal's clean-up waits for it.
    edit_file(&config, |t| {
        t.replace(
            &format!("port = {}\n", env.server_ssh_port),
            &format!("port = {}\n", hole.port),
        )
    });
    let file = env.random_file("f", PART);
    for (sig, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let mut run = env.spawn_send(&send_args(&file, &config, &["--no-peers"]));
        std::thread::sleep(Duration::from_millis(1500));
        signal(&run, sig);
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            run.child.try_wait().unwrap().is_none(),
            "the first signal stops gracefully, waiting for the hung connect"
        );
        let asked = Instant::now();
        signal(&run, sig);
        let (status, _, stderr) = run.finish(Duration::from_secs(3));
        eprintln!("exited {:?} after the second signal", asked.elapsed());
        assert_eq!(status.code(), Some(code), "{stderr}");
    }
}

#[test]
fn a_relay_cannot_dump_core_while_it_holds_the_password() {
    let env = TestEnv::new(1);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 12 * PART);
    let run = env.spawn_send(&send_args(&file, &config, &["--bwlimit", "1MiB"]));
    run.wait_parts(1, Some("p1"));
    let pattern = format!("{} relay", env.root.join("pub/relayup").display());
    let out = Command::new("pgrep")
        .args(["-u", PEER_USERS[0], "-f", &pattern])
        .output()
        .unwrap();
    let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(pids.len(), 1, "one relay running: {pids:?}");
    // The kernel hands /proc of a process that is not dumpable to root.
    let owner = fs::metadata(format!("/proc/{}/environ", pids[0]))
        .unwrap()
        .uid();
    assert_eq!(owner, 0, "the relay is not dumpable");
    let (status, _, stderr) = run.finish(Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
}

#[test]
fn ftps_through_a_peer_with_a_system_ca_bundle_as_ca_file() {
    let env = TestEnv::new(1);
    let system = Path::new("/etc/ssl/certs/ca-certificates.crt");
    assert!(
        system.exists(),
        "{} is missing: apt-get install ca-certificates (see .ci/run)",
        system.display()
    );
    let bundle = env.root.join("pub/bundle.pem");
    let mut pem = fs::read(system).unwrap();
    pem.extend(fs::read(env.root.join("pub/ftps-ca.pem")).unwrap());
    assert!(pem.len() > 100 << 10, "a system-sized bundle");
    fs::write(&bundle, pem).unwrap();
    fs::set_permissions(&bundle, fs::Permissions::from_mode(0o644)).unwrap();
    let config = env.write_config("c.toml", "ftps", &[]);
    edit_file(&config, |t| {
        t.replace(
            &env.root.join("pub/ftps-ca.pem").display().to_string(),
            &bundle.display().to_string(),
        )
    });
    let file = env.random_file("f", 8 * PART + 1);
    let out = env.send(
        &file,
        &config,
        &["--part-size", "1MiB", "--bwlimit", "2MiB", "--json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("left out"), "{stderr}");
    let events = json_lines(&out);
    assert!(
        peer_bytes(event(&events, "done")) > 0,
        "the peer uploaded over ftps: {}",
        text(&out)
    );
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
    env.assert_clean();
}

#[test]
fn a_remote_command_killed_by_a_signal_is_a_failure_naming_it() {
    let env = TestEnv::new(1);
    let script = env.root.join("pub/killed.sh");
    // Its whole process group, so the session itself dies by the signal, whichever
    // shells in between exec or fork.
    fs::write(&script, "#!/bin/sh\nkill -KILL 0\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let config = env.write_config("c.toml", "ftp", &[]);
    edit_file(&config, |t| {
        t.replace(
            &format!("relayup = \"{}\"", env.root.join("pub/relayup").display()),
            &format!("relayup = \"{}\"", script.display()),
        )
    });
    let out = env.peers_check(&config, &["--no-rate"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let rows = json_lines(&out);
    let p1 = rows
        .iter()
        .find(|r| r["name"] == "p1")
        .unwrap_or_else(|| panic!("{}", text(&out)));
    assert!(
        p1["problem"]
            .as_str()
            .unwrap_or_default()
            .contains("relay was killed by signal SIGKILL"),
        "{}",
        text(&out)
    );

    // A send starts the relay directly: the peer is left out, with the signal named.
    // (Two parts at least: a file of one part is sent from this machine alone.)
    let file = env.random_file("f", 3 * PART);
    let out = env.send(&file, &config, &["--no-progress"]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("peer p1 left out: ")
            && stderr.contains("relay was killed by signal SIGKILL"),
        "{}",
        text(&out)
    );
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
}
