//! Fault injection: each test ends with the server's file equal to the source, or a
//! clean failure with nothing under the destination name.

use crate::harness::{
    event, md5_file, send_args, text, uid_of, wait_until, TestEnv, PART, PEER_USERS, SERVER_USER,
};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

#[test]
fn kill_9_of_the_client_then_resume_sends_only_what_is_missing() {
    let env = TestEnv::new(3);
    let config = env.write_config("c.toml", "ftp", &[]);
    let size = 24 * PART + 5;
    let file = env.random_file("big", size);
    let run = env.spawn_send(&send_args(&file, &config, &["--bwlimit", "2MiB"]));
    run.wait_parts(5, None);
    let mut run = run;
    run.child.kill().unwrap(); // SIGKILL: no chance to clean up
    let _ = run.finish(Duration::from_secs(10));
    // Relays see their connection drop and remove what they staged.
    wait_until("staged parts are removed", Duration::from_secs(10), || {
        env.staged_files().is_empty()
    });
    assert!(
        !env.srv.join("big").exists(),
        "nothing under the destination name"
    );
    let tmp = env.temp_dirs();
    assert_eq!(tmp.len(), 1, "the parts are kept for resume");
    let complete: u64 = fs::read_dir(&tmp[0])
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .map(|e| e.metadata().unwrap().len())
        .filter(|&len| len == PART)
        .sum();
    assert!(
        complete >= 4 * PART,
        "at least the reported parts are on the server"
    );

    let status = env.relayup(&["status", "--json"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("\"dest\":\"big\""),
        "{}",
        text(&status)
    );

    let run = env.spawn_send(&send_args(&file, &config, &[]));
    let (status, events, stderr) = run.finish(Duration::from_secs(120));
    assert!(status.success(), "resume failed: {stderr}");
    let start = events.iter().find(|e| e["type"] == "start").unwrap();
    assert!(start["resumed_parts"].as_u64().unwrap() >= 4, "{start}");
    let sent: u64 = event(&events, "done")["hosts"]
        .as_object()
        .unwrap()
        .values()
        .map(|h| h["bytes"].as_u64().unwrap())
        .sum();
    let hosts = 4;
    assert!(
        sent <= size - complete + hosts * PART,
        "resume sent {sent} bytes; missing were {} (+ one part per host allowed)",
        size - complete
    );
    assert_eq!(md5_file(&env.srv.join("big")), md5_file(&file));
    env.assert_clean();
    let status = env.relayup(&["status", "--json"]);
    assert!(
        status.stdout.is_empty(),
        "journal removed after success: {}",
        text(&status)
    );
}

#[test]
fn ctrl_c_stops_cleans_peers_keeps_server_parts_and_clean_removes_them() {
    let env = TestEnv::new(2);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 30 * PART);
    let run = env.spawn_send(&send_args(&file, &config, &["--bwlimit", "1MiB"]));
    run.wait_parts(2, None);
    let pid = run.child.id() as i32;
    let asked = Instant::now();
    unsafe { libc::kill(pid, libc::SIGINT) };
    let (status, _, stderr) = run.finish(Duration::from_secs(15));
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("resume") && stderr.contains("relayup"),
        "prints the resume command: {stderr}"
    );
    eprintln!("stopped {took:?} after SIGINT");
    wait_until("staged parts are removed", Duration::from_secs(10), || {
        env.staged_files().is_empty()
    });
    assert!(!env.srv.join("f").exists());
    assert_eq!(env.temp_dirs().len(), 1, "server parts kept for resume");

    let out = env.relayup(&["clean"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        env.temp_dirs().is_empty(),
        "clean removed the server's temp dir"
    );
    let out = env.relayup(&["status", "--json"]);
    assert!(out.stdout.is_empty(), "{}", text(&out));
}

#[test]
fn a_peer_relay_killed_mid_part_hands_its_parts_to_others() {
    let env = TestEnv::new(3);
    let config = env.write_config("c.toml", "ftp", &[]);
    // Long enough (~4 s per host) that every peer is surely in before the end.
    let file = env.random_file("f", 32 * PART + 9);
    let run = env.spawn_send(&send_args(&file, &config, &["--bwlimit", "2MiB"]));
    run.wait_parts(1, Some("p1"));
    env.signal_relays("-KILL", PEER_USERS[0]);
    let (status, events, stderr) = run.finish(Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("p1 dropped"), "{stderr}");
    assert_eq!(event(&events, "done")["md5"], md5_file(&file).as_str());
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
    env.assert_clean();
}

#[test]
fn a_peer_sshd_killed_mid_send_hands_its_parts_to_others() {
    let env = TestEnv::new(3);
    let config = env.write_config("c.toml", "sftp", &[]);
    let file = env.random_file("f", 32 * PART);
    let run = env.spawn_send(&send_args(&file, &config, &["--bwlimit", "2MiB"]));
    run.wait_parts(1, Some("p2"));
    // The daemon and its per-connection processes: the peer's SSH side is gone.
    env.kill_sessions_of_sshd(env.peer_ports[1]);
    let (status, _events, stderr) = run.finish(Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("p2 dropped"), "{stderr}");
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
}

#[test]
fn a_stalled_peer_is_dropped_after_the_stall_timeout() {
    let env = TestEnv::new(2);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 24 * PART);
    let run = env.spawn_send(&send_args(
        &file,
        &config,
        &["--bwlimit", "2MiB", "--stall-timeout", "2"],
    ));
    run.wait_parts(1, Some("p1"));
    env.signal_relays("-STOP", PEER_USERS[0]);
    let (status, _events, stderr) = run.finish(Duration::from_secs(120));
    env.signal_relays("-KILL", PEER_USERS[0]);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("p1 dropped"), "{stderr}");
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
}

#[test]
fn a_corrupted_staged_part_is_caught_and_sent_again() {
    let env = TestEnv::new(1);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 8 * PART);
    let run = env.spawn_send(&send_args(&file, &config, &["--bwlimit", "1MiB"]));
    // Flip the last byte of the first fully staged part on the peer.
    let stage = env.staging(0);
    let mut corrupted = None;
    wait_until("a part is staged", Duration::from_secs(30), || {
        for e in fs::read_dir(&stage).into_iter().flatten().flatten() {
            if e.metadata().map(|m| m.len() == PART).unwrap_or(false) {
                use std::os::unix::fs::FileExt;
                if let Ok(f) = fs::OpenOptions::new().read(true).write(true).open(e.path()) {
                    let mut b = [0u8; 1];
                    f.read_exact_at(&mut b, PART - 1).unwrap();
                    f.write_all_at(&[b[0] ^ 0xff], PART - 1).unwrap();
                    corrupted = Some(e.file_name());
                    return true;
                }
            }
        }
        false
    });
    let (status, _events, stderr) = run.finish(Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
    // Caught by the relay's check before upload, or (if the byte flipped after it)
    // by the merge, which finds the part by its MD5 and sends it again.
    assert!(
        stderr.contains("sending it again") || stderr.contains("sending them again"),
        "corruption of {corrupted:?} was reported: {stderr}"
    );
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
    env.assert_clean();
}

#[test]
fn a_staging_disk_too_small_leaves_that_peer_out_only() {
    let env = TestEnv::new(2);
    let stage = env.staging(0);
    fs::create_dir(&stage).unwrap();
    let uid = uid_of(PEER_USERS[0]);
    let mounted = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size=256k,mode=0700,uid={}", uid),
            "tmpfs",
        ])
        .arg(&stage)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tiny tmpfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&stage);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 6 * PART);
    let out = env.send(
        &file,
        &config,
        &[
            "--part-size",
            "1MiB",
            // Paced, so this machine cannot send it all before the peers are up.
            "--bwlimit",
            "2MiB",
            "--no-progress",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Pre-flight sees that two 1 MiB parts cannot fit in 256 KiB and leaves it out.
    assert!(
        stderr.contains("p1 left out") && stderr.contains("staging") && stderr.contains("free"),
        "{stderr}"
    );
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
    assert!(
        fs::read_dir(&stage).unwrap().next().is_none(),
        "nothing left in the full staging dir"
    );
}

#[test]
fn a_server_dir_without_write_permission_fails_clearly() {
    let env = TestEnv::new(1);
    let config = env.write_config("c.toml", "ftp", &[]);
    fs::set_permissions(
        &env.srv,
        std::os::unix::fs::PermissionsExt::from_mode(0o555),
    )
    .unwrap();
    let file = env.random_file("f", 1000);
    let out = env.send(&file, &config, &["--no-progress"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not writable") && stderr.contains(env.srv.to_str().unwrap()),
        "{stderr}"
    );
    assert!(!env.srv.join("f").exists());
}

#[test]
fn a_source_that_changes_during_the_send_is_never_renamed_into_place() {
    let env = TestEnv::new(1);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 8 * PART);
    let run = env.spawn_send(&send_args(&file, &config, &["--bwlimit", "2MiB"]));
    run.wait_parts(1, None);
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.write_all_at(b"changed!", 7 * PART).unwrap();
    }
    let (status, _events, stderr) = run.finish(Duration::from_secs(120));
    assert_eq!(status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("changed during the send"), "{stderr}");
    assert!(
        !env.srv.join("f").exists(),
        "nothing under the destination name"
    );
}

#[test]
fn an_identical_destination_means_nothing_to_send() {
    let env = TestEnv::new(1);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 3 * PART);
    fs::copy(&file, env.srv.join("f")).unwrap();
    let out = env.send(&file, &config, &["--no-progress"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already on the server"),
        "{}",
        text(&out)
    );
    env.assert_clean();
}

#[test]
fn a_part_corrupted_on_the_server_before_the_merge_is_found_and_sent_again() {
    let env = TestEnv::new(1);
    let config = env.write_config("c.toml", "ftp", &[]);
    let (run, file, part) = env.send_until_part_2_is_on_the_server(&config);
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&part).unwrap();
        f.write_all_at(b"bit rot", 1000).unwrap();
    }
    let (status, _events, stderr) = run.finish(Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("corrupt on the server"), "{stderr}");
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
    env.assert_clean();
}

/// A peer in its own network namespace, behind a veth link the test can cut.
struct NetnsPeer {
    ns: String,
    link: String,
}

impl NetnsPeer {
    fn sh(cmd: &str) {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Host side 198.18.222.1, peer side 198.18.222.2 (a /30 of the benchmarking range).
    fn new() -> NetnsPeer {
        let id = std::process::id() % 100_000;
        let (ns, link) = (format!("rut{id}"), format!("rutv{id}"));
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &ns])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &link])
            .status();
        Self::sh(&format!(
            "ip netns add {ns} && ip link add {link} type veth peer name {link}p && ip link set {link}p netns {ns} \
             && ip addr add 198.18.222.1/30 dev {link} && ip link set {link} up \
             && ip -n {ns} addr add 198.18.222.2/30 dev {link}p && ip -n {ns} link set {link}p up && ip -n {ns} link set lo up"
        ));
        NetnsPeer { ns, link }
    }
}

impl Drop for NetnsPeer {
    fn drop(&mut self) {
        let ns = &self.ns;
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("ip netns pids {ns} | xargs -r kill -9; ip netns del {ns}; ip link del {} 2>/dev/null", self.link))
            .status();
    }
}

#[test]
fn a_peer_cut_off_the_network_mid_send_hands_its_parts_to_others() {
    let env = TestEnv::new(1);
    let net = NetnsPeer::new();
    // The cut-off peer's sshd runs inside the namespace, as user p2.
    let key = env.private.join("host_cut");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let cfg = env.private.join("sshd_cut.conf");
    fs::write(
        &cfg,
        format!(
            "Port 22\nListenAddress 198.18.222.2\nHostKey {}\nPidFile none\nAuthorizedKeysFile {}\nStrictModes no\n\
             UsePAM no\nPasswordAuthentication no\nAllowUsers {}\nSubsystem sftp internal-sftp\nLogLevel ERROR\n",
            key.display(),
            env.root.join("pub/authorized_keys").display(),
            PEER_USERS[1]
        ),
    )
    .unwrap();
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &net.ns, "/usr/sbin/sshd", "-f"])
        .arg(&cfg)
        .status()
        .unwrap();
    assert!(status.success(), "sshd in the namespace");
    wait_until(
        "the namespaced sshd listens",
        Duration::from_secs(10),
        || std::net::TcpStream::connect("198.18.222.2:22").is_ok(),
    );
    let pubkey = fs::read_to_string(key.with_extension("pub")).unwrap();
    let mut kh = fs::OpenOptions::new()
        .append(true)
        .open(env.private.join("known_hosts"))
        .unwrap();
    use std::io::Write;
    let mut f = pubkey.split_whitespace();
    writeln!(
        kh,
        "198.18.222.2 {} {}",
        f.next().unwrap(),
        f.next().unwrap()
    )
    .unwrap();
    let cut = format!(
        "host = \"198.18.222.2\"\nuser = \"{}\"\nrelayup = \"{}\"\nstaging = \"{}\"",
        PEER_USERS[1],
        env.root.join("pub/relayup").display(),
        env.root.join("stage/cut").display()
    );
    let config = env.write_config("c.toml", "ftp", &[("cut", cut)]);
    // Everyone reaches the FTP server at the host side of the veth link.
    let text_cfg = fs::read_to_string(&config)
        .unwrap()
        .replace("ftp://127.0.0.1:", "ftp://198.18.222.1:");
    fs::write(&config, text_cfg).unwrap();

    let file = env.random_file("f", 24 * PART);
    let run = env.spawn_send(&send_args(
        &file,
        &config,
        &["--bwlimit", "2MiB", "--stall-timeout", "3"],
    ));
    run.wait_parts(1, Some("cut"));
    NetnsPeer::sh(&format!("ip link set {} down", net.link));
    let (status, events, stderr) = run.finish(Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("cut dropped"), "{stderr}");
    assert_eq!(event(&events, "done")["md5"], md5_file(&file).as_str());
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));

    // The link stays down, so the peer never hears from this machine again: within its
    // idle limit (--stall-timeout + 30 s) its relay stops and removes what it staged.
    let relay_running = || {
        let out = std::process::Command::new("ip")
            .args(["netns", "pids", &net.ns])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .any(|pid| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("relayup\0relay"))
            })
    };
    wait_until(
        "the cut-off peer's relay stops on its own",
        Duration::from_secs(60),
        || !relay_running(),
    );
    let staged: Vec<_> = fs::read_dir(env.root.join("stage/cut"))
        .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(staged.is_empty(), "left on the cut-off peer: {staged:?}");
}

/// A relay command that speaks the protocol but lies: `script` handles each request
/// line in `$line` after a correct greeting and `ready`.
fn lying_relay(env: &TestEnv, name: &str, on_request: &str) -> std::path::PathBuf {
    let path = env.root.join("pub").join(name);
    // Its staging dir is the test's own (removed with it), made by whichever peer runs it.
    let stage = env.root.join("stage").join(name).display().to_string();
    fs::write(
        &path,
        format!(
            "#!/bin/sh\n\
             printf '{{\"type\":\"relay\",\"version\":\"0\",\"protocol\":0,\"platform\":\"x\"}}\n'\n\
             read -r ping\n\
             read -r hello\n\
             p=$(printf %s \"$hello\" | sed 's/.*\"protocol\":\\([0-9]*\\).*/\\1/')\n\
             mkdir -p -m 0700 {stage} 2>/dev/null\n\
             printf '{{\"type\":\"ready\",\"version\":\"0\",\"protocol\":%s,\"staging\":\"{stage}\"}}\\n' \"$p\"\n\
             while read -r line; do\n\
               i=$(printf %s \"$line\" | sed -n 's/.*\"index\":\\([0-9]*\\).*/\\1/p')\n\
               s=$(printf %s \"$line\" | sed -n 's/.*\"size\":\\([0-9]*\\).*/\\1/p')\n\
               x=$(printf %s \"$line\" | sed -n 's/.*\"xxh3\":\"\\([0-9a-f]*\\)\".*/\\1/p')\n\
               case $line in *'\"upload\"'*) {on_request};; *bye*) exit 0;; esac\n\
             done\n"
        ),
    )
    .unwrap();
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

#[test]
fn relays_that_lie_cannot_break_the_send() {
    let env = TestEnv::new(3);
    // p1 reports every part done at once and uploads nothing; p2 answers with
    // endless garbage; p3 claims impossible byte counts.
    let liar = lying_relay(
        &env,
        "liar",
        r#"printf '{"type":"part_done","index":%s,"bytes":%s,"xxh3":"%s"}\n' "$i" "$s" "$x""#,
    );
    let garbage = lying_relay(&env, "garbage", "while :; do echo garbage; done");
    let counts = lying_relay(
        &env,
        "counts",
        r#"printf '{"type":"progress","index":%s,"bytes":18446744073709551615}\n' "$i"; printf '{"type":"part_done","index":%s,"bytes":%s1,"xxh3":"%s"}\n' "$i" "$s" "$x""#,
    );
    let config = env.write_config("c.toml", "ftp", &[]);
    let bin = env.root.join("pub/relayup").display().to_string();
    let mut n = 0;
    crate::harness::edit_file(&config, |t| {
        t.lines()
            .map(|l| {
                if l.starts_with("relayup = ") {
                    n += 1;
                    let fake = [&liar, &garbage, &counts][n - 1];
                    format!("relayup = \"{}\"\n", fake.display())
                } else {
                    format!("{l}\n")
                }
            })
            .collect::<String>()
            .replace(&bin, "unused")
    });
    let file = env.random_file("f", 8 * PART + 5);
    let out = env.send(
        &file,
        &config,
        &[
            "--part-size",
            "1MiB",
            "--no-progress",
            "--stall-timeout",
            "10",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("reported done by p1"), "{stderr}");
    assert!(
        stderr.contains("p2 dropped") && stderr.contains("not events"),
        "{stderr}"
    );
    // p3's impossible count is caught each time: the part goes again (and a third
    // time drops p3, if the send lasts that long).
    assert!(
        stderr.contains("p3 dropped")
            || (stderr.contains("p3: part") && stderr.contains("which is not what it was given")),
        "{stderr}"
    );
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
}

#[test]
fn a_temp_dir_left_by_an_interrupted_background_removal_goes_with_the_next_send() {
    let env = TestEnv::new(1);
    // What a server reboot during the background `rm -rf` after a commit leaves.
    let trash = env.srv.join(".relayup-0123456789abcdef.done.4242");
    fs::create_dir(&trash).unwrap();
    fs::write(trash.join("0.part"), vec![7u8; 1000]).unwrap();
    let out = std::process::Command::new("chown")
        .args(["-R", &format!("{SERVER_USER}:")])
        .arg(&trash)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 3 * PART);
    let out = env.send(&file, &config, &["--no-progress"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
    env.assert_clean();
}

#[test]
fn a_server_away_for_20_s_mid_send_keeps_every_host() {
    let mut env = TestEnv::new(3);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 40 * PART);
    let run = env.spawn_send(&send_args(&file, &config, &["--bwlimit", "1MiB"]));
    run.wait_parts(4, None);
    env.stop_ftp();
    std::thread::sleep(Duration::from_secs(20));
    env.start_ftp();
    let (status, events, stderr) = run.finish(Duration::from_secs(180));
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("server unreachable for"), "{stderr}");
    let back = events
        .iter()
        .position(|e| e["type"] == "server_back")
        .unwrap_or_else(|| panic!("a server_back event: {events:?}"));
    assert!(events[..back]
        .iter()
        .any(|e| e["type"] == "server_unreachable"));
    // No host was dropped for the server's absence: each carried parts after it.
    for host in ["local", "p1", "p2", "p3"] {
        assert!(
            events[back..]
                .iter()
                .any(|e| e["type"] == "part_done" && e["host"] == host),
            "{host} uploaded after the outage: {stderr}"
        );
    }
    assert!(!stderr.contains("dropped"), "{stderr}");
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
    env.assert_clean();
}
