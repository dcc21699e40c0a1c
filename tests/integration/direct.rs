//! Direct writes: no `[merge]` login, every host writes its parts into one file on the
//! server over its own FTP/FTPS/SFTP login; each part verified, then renamed.

use crate::harness::{edit_file, event, json_lines, md5_file, text, TestEnv, PART};
use std::path::{Path, PathBuf};

/// A config for `scheme` without the `[merge]` section: the server gives uploads only.
pub fn direct_config(env: &TestEnv, name: &str, scheme: &str) -> PathBuf {
    let path = env.write_config(name, scheme, &[]);
    without_merge(&path);
    path
}

/// Takes the `[merge]` section out of a config the harness wrote.
fn without_merge(path: &Path) {
    edit_file(path, |t| {
        let start = t.find("[merge]").expect("write_config writes [merge]");
        let end = start + t[start..].find("\n\n").expect("a blank line ends [merge]") + 2;
        format!("{}{}", &t[..start], &t[end..])
    });
}

/// Sends `file` as `dest`, checks the server's copy by MD5, that nothing is left, and
/// returns the `done` event.
fn send_ok(
    env: &TestEnv,
    config: &Path,
    file: &Path,
    dest: &str,
    extra: &[&str],
) -> serde_json::Value {
    let mut args = vec!["--dest", dest, "--json"];
    args.extend_from_slice(extra);
    let out = env.send(file, config, &args);
    assert!(
        out.status.success(),
        "send of {dest} failed:\n{}",
        text(&out)
    );
    assert_eq!(
        md5_file(&env.srv.join(dest)),
        md5_file(file),
        "{dest}: the server's copy differs from the source"
    );
    env.assert_clean();
    event(&json_lines(&out), "done").clone()
}

#[test]
fn direct_writes_over_ftp_with_read_back() {
    let mut env = TestEnv::new(3);
    env.set_vsftpd_option("lock_upload_files=NO");
    env.stop_server_sshd();
    let config = direct_config(&env, "direct.toml", "ftp");
    for size in [0, 1, 3, PART - 1, PART, PART + 1, 3 * PART + 7] {
        let file = env.random_file(&format!("f{size}"), size);
        for strategy in ["adaptive", "equal"] {
            let dest = format!("ftp-{strategy}-{size}.bin");
            let mut extra = vec!["--strategy", strategy];
            if strategy == "adaptive" {
                extra.extend(["--part-size", "1MiB"]);
            }
            let done = send_ok(&env, &config, &file, &dest, &extra);
            assert_eq!(done["verification"], "read-back", "{done}");
        }
    }
}

/// The server has no SSH login at all: its sshd is stopped before the sends.
#[test]
fn direct_writes_over_ftps_without_any_ssh_login_on_the_server() {
    let mut env = TestEnv::new(3);
    env.set_vsftpd_option("lock_upload_files=NO");
    env.stop_server_sshd();
    let config = direct_config(&env, "direct.toml", "ftps");
    let file = env.random_file("big", 200 * PART + 12345);
    for strategy in ["adaptive", "equal"] {
        let dest = format!("ftps-{strategy}.bin");
        let done = send_ok(&env, &config, &file, &dest, &["--strategy", strategy]);
        assert_eq!(done["verification"], "read-back", "{done}");
        assert_eq!(done["verified"], true, "{done}");
        let hosts = done["hosts"].as_object().unwrap();
        for h in ["local", "p1", "p2", "p3"] {
            assert!(
                hosts.get(h).is_some_and(|r| r["bytes"].as_u64() > Some(0)),
                "{strategy}: {h} wrote nothing: {done}"
            );
        }
    }
}

/// A server slow to log in (vsftpd's `delay_successful_login`, 2 s) still gets direct
/// writes from every host: the probe for parallel writes waits for its second login
/// as long as for any other, and only its wait for the upload's `150` is short (its
/// 1.5 s limit on the whole login failed the send). A login slower than
/// `--stall-timeout` is reported as such.
#[test]
fn a_server_slow_to_log_in_still_gets_direct_writes_from_every_host() {
    let mut env = TestEnv::new(1);
    env.set_vsftpd_option("lock_upload_files=NO");
    env.set_vsftpd_option("delay_successful_login=2");
    env.stop_server_sshd();
    let config = direct_config(&env, "direct.toml", "ftp");
    let file = env.random_file("f", 6 * PART + 1);
    let extra = ["--part-size", "1MiB", "--bwlimit", "1MiB"];
    let done = send_ok(&env, &config, &file, "f", &extra);
    let hosts = done["hosts"].as_object().unwrap();
    assert!(hosts["p1"]["bytes"].as_u64() > Some(0), "{done}");
    // Waiting less than the server takes: said so, not blamed on the password.
    let out = env.send(&file, &config, &["--dest", "g", "--stall-timeout", "1"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no answer to the login as")
            && stderr.contains("within 1 s")
            && stderr.contains("--stall-timeout")
            && !stderr.contains("check server.user"),
        "{stderr}"
    );
    assert!(!env.srv.join("g").exists());
}

/// vsftpd's default makes every upload into one file wait for the others: the send
/// goes from this machine alone, says so, and is still right.
#[test]
fn a_server_that_serialises_writes_gets_them_from_this_machine_only() {
    let env = TestEnv::new(2);
    let config = direct_config(&env, "direct.toml", "ftp");
    let file = env.random_file("f", 5 * PART + 3);
    let out = env.send(&file, &config, &["--json", "--part-size", "1MiB"]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lock_upload_files"), "{stderr}");
    let done = event(&json_lines(&out), "done").clone();
    let hosts = done["hosts"].as_object().unwrap();
    assert_eq!(hosts["local"]["bytes"], 5 * PART + 3, "{done}");
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
    env.assert_clean();
}

/// `XMD5` over ranges: the server hashes every part, nothing is read back.
#[test]
fn proftpd_hashes_each_part_so_nothing_is_read_back() {
    let mut env = TestEnv::new(2);
    let port = env.start_proftpd();
    let config = env.write_proftpd_config("pro.toml", port);
    without_merge(&config);
    let file = env.random_file("f", 6 * PART + 5);
    let done = send_ok(&env, &config, &file, "pro.bin", &["--part-size", "1MiB"]);
    assert_eq!(done["verification"], "server-hash-ranges", "{done}");
    let log = std::fs::read_to_string(env.private.join("proftpd.cmds")).unwrap_or_default();
    assert!(log.contains("STOR"), "the command log works: {log}");
    assert!(
        !log.contains("RETR"),
        "read back although the server hashes: {log}"
    );
    // Asked for read-back, it reads back.
    let done = send_ok(&env, &config, &file, "pro2.bin", &["--verify", "read-back"]);
    assert_eq!(done["verification"], "read-back", "{done}");
    let log = std::fs::read_to_string(env.private.join("proftpd.cmds")).unwrap();
    assert!(log.contains("RETR"), "{log}");
}

/// An SFTP-only, chrooted account (`ForceCommand internal-sftp`): no shell, one
/// directory, and the peers write into it too.
#[test]
fn an_sftp_only_chrooted_account_takes_the_whole_send() {
    let mut env = TestEnv::new(3);
    let server = env.add_sftp_only_server();
    let config = env.write_sftp_only_config("sftponly.toml", &server);
    let file = env.random_file("f", 9 * PART + 77);
    let out = env.send(
        &file,
        &config,
        &["--json", "--part-size", "1MiB", "--dest", "r.bin"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(md5_file(&server.upload.join("r.bin")), md5_file(&file));
    let done = event(&json_lines(&out), "done").clone();
    assert_eq!(done["verification"], "read-back", "{done}");
    let left: Vec<_> = std::fs::read_dir(&server.upload)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["r.bin"], "only the file is left in the upload dir");
    // SFTP's rename never replaces: with --overwrite the old file is moved aside,
    // the new one takes its name, the old one goes; without, nothing is replaced.
    let other = env.random_file("other", 2 * PART + 1);
    let out = env.send(&other, &config, &["--dest", "r.bin", "--no-progress"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(md5_file(&server.upload.join("r.bin")), md5_file(&file));
    let out = env.send(
        &other,
        &config,
        &["--dest", "r.bin", "--overwrite", "--no-progress"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(md5_file(&server.upload.join("r.bin")), md5_file(&other));
    let left: Vec<_> = std::fs::read_dir(&server.upload)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["r.bin"], "nothing aside is left");
    // --verify none is honest about it.
    let out = env.send(
        &file,
        &config,
        &["--json", "--verify", "none", "--dest", "n.bin"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let done = event(&json_lines(&out), "done").clone();
    assert_eq!(
        (done["verification"].as_str(), done["verified"].as_bool()),
        (Some("none"), Some(false))
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NOT verified"),
        "{}",
        text(&out)
    );
}

/// Without --overwrite an existing name is never replaced (the same file is simply
/// there already); with it a regular file is, a directory never.
#[test]
fn existing_destinations_over_direct_writes() {
    let mut env = TestEnv::new(1);
    env.set_vsftpd_option("lock_upload_files=NO");
    let config = direct_config(&env, "direct.toml", "ftp");
    let file = env.random_file("f", 3 * PART + 1);
    let dest = env.srv.join("d.bin");
    std::fs::write(&dest, b"someone else's").unwrap();
    let out = env.send(&file, &config, &["--dest", "d.bin"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--overwrite"), "{}", text(&out));
    assert_eq!(std::fs::read(&dest).unwrap(), b"someone else's");
    send_ok(&env, &config, &file, "d.bin", &["--overwrite"]);
    // The very file is there now: nothing to send, exit 0.
    let out = env.send(&file, &config, &["--dest", "d.bin"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("already on the server"),
        "{}",
        text(&out)
    );
    std::fs::create_dir(env.srv.join("dir.bin")).unwrap();
    let out = env.send(&file, &config, &["--dest", "dir.bin", "--overwrite"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("is a directory"), "{}", text(&out));
    env.assert_clean();
}

/// Killed (-9) in the middle, a byte of a part that was already verified is then
/// changed on the server: the resumed send verifies that part again, finds it wrong,
/// sends it again, and only then publishes.
#[test]
fn resume_after_kill_finds_a_part_corrupted_on_the_server_and_sends_it_again() {
    let mut env = TestEnv::new(2);
    env.set_vsftpd_option("lock_upload_files=NO");
    let config = direct_config(&env, "direct.toml", "ftp");
    let file = env.random_file("f", 24 * PART + 9);
    let args = crate::harness::send_args(&file, &config, &["--bwlimit", "4MiB"]);
    let run = env.spawn_send(&args);
    // The journal lists the parts verified on the server.
    let journal_dir = env.root.join("state/relayup");
    let verified = |min: usize| {
        std::fs::read_dir(&journal_dir).ok().and_then(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .find_map(|e| {
                    let j: serde_json::Value =
                        serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok()?;
                    let v: Vec<u64> = j["verified"]
                        .as_array()?
                        .iter()
                        .filter_map(|x| x.as_u64())
                        .collect();
                    (v.len() >= min).then_some(v)
                })
        })
    };
    crate::harness::wait_until(
        "three parts verified",
        std::time::Duration::from_secs(60),
        || verified(3).is_some(),
    );
    let mut run = run;
    run.child.kill().unwrap();
    let (status, _, _) = run.finish(std::time::Duration::from_secs(10));
    assert!(!status.success());
    let victim = verified(3).unwrap()[1];
    let tmp = env.temp_dirs();
    assert_eq!(tmp.len(), 1, "{tmp:?}");
    let data = tmp[0].join("file");
    let mut bytes = std::fs::read(&data).unwrap();
    let at = (victim * PART + 1000) as usize;
    bytes[at] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();
    // The resumed send: the kill left this machine's lock on the server, a dead
    // process's, which it takes over.
    let out = env.send(&file, &config, &["--part-size", "1MiB", "--no-progress"]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("resuming"), "{stderr}");
    assert!(
        stderr.contains("corrupt on the server; sending them again"),
        "{stderr}"
    );
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
    env.assert_clean();
}

/// A second send of the same file while the first runs (from another journal, as
/// from another machine) stops at once at the lock on the server: exit 6.
#[test]
fn a_double_start_meets_the_lock_on_the_server() {
    let mut env = TestEnv::new(1);
    env.set_vsftpd_option("lock_upload_files=NO");
    let config = direct_config(&env, "direct.toml", "ftp");
    let file = env.random_file("f", 16 * PART);
    let args = crate::harness::send_args(&file, &config, &["--bwlimit", "4MiB"]);
    let first = env.spawn_send(&args);
    first.wait_parts(1, None);
    // Parts are on the server, and nothing is under the destination's name yet.
    assert!(!env.srv.join("f").exists());
    let second = env.spawn_send_with_state(&args, &env.root.join("other-state"));
    let (status, _, stderr) = second.finish(std::time::Duration::from_secs(60));
    assert_eq!(status.code(), Some(6), "{stderr}");
    assert!(
        stderr.contains("another send of this file is running"),
        "{stderr}"
    );
    let (status, _, stderr) = first.finish(std::time::Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
    env.assert_clean();
}

/// With a `[merge]` shell login and `assembly = "direct"`, the login's md5sum hashes
/// each part's range on the server: nothing is read back.
#[test]
fn direct_writes_with_a_shell_login_hash_on_the_server() {
    let env = TestEnv::new(3);
    let config = env.write_config("shell.toml", "sftp", &[]);
    edit_file(&config, |t| {
        t.replacen("[server]\n", "[server]\nassembly = \"direct\"\n", 1)
    });
    let file = env.random_file("f", 7 * PART + 3);
    let done = send_ok(&env, &config, &file, "s.bin", &["--part-size", "1MiB"]);
    assert_eq!(done["verification"], "server-md5", "{done}");
    let hosts = done["hosts"].as_object().unwrap();
    assert_eq!(hosts.len(), 4, "{done}");
}

/// `relayup clean` removes an interrupted direct send's file and lock over FTP alone.
#[test]
fn clean_removes_an_interrupted_direct_send_over_ftp() {
    let mut env = TestEnv::new(1);
    env.set_vsftpd_option("lock_upload_files=NO");
    env.stop_server_sshd();
    let config = direct_config(&env, "direct.toml", "ftp");
    let file = env.random_file("f", 16 * PART);
    let args = crate::harness::send_args(&file, &config, &["--bwlimit", "4MiB"]);
    let mut run = env.spawn_send(&args);
    run.wait_parts(2, None);
    run.child.kill().unwrap();
    let _ = run.finish(std::time::Duration::from_secs(10));
    assert_eq!(env.temp_dirs().len(), 1);
    let out = env.relayup(&["clean"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(env.temp_dirs().is_empty(), "{:?}", env.temp_dirs());
    let out = env.relayup(&["status"]);
    assert!(text(&out).contains("no unfinished sends"), "{}", text(&out));
}

/// Direct writes need the file's size once on the server: over SFTP the pre-flight
/// reads the free space and refuses a file that cannot fit, before sending; one that
/// fits (but would not fit twice, as the merge needs) arrives.
#[test]
fn direct_writes_need_room_for_the_file_once() {
    let env = TestEnv::new(1);
    let small = env.srv.join("small");
    let _mount = crate::integrity::Tmpfs::mount(&small, "4m");
    let config = direct_config(&env, "direct.toml", "sftp");
    let srv = env.srv.display().to_string();
    edit_file(&config, |t| {
        t.replace(&format!("{srv}\""), &format!("{srv}/small\""))
    });
    let big = env.random_file("big", 5 * PART);
    let out = env.send(&big, &config, &["--no-progress"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("free, this send needs 5.0 MiB"),
        "{}",
        text(&out)
    );
    let fits = env.random_file("fits", 3 * PART);
    let out = env.send(&fits, &config, &["--no-progress", "--part-size", "1MiB"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(md5_file(&small.join("fits")), md5_file(&fits));
}

/// The login that takes the lock idles through the transfer; a server that drops idle
/// logins (vsftpd's idle_session_timeout) must not cost the rename at the end.
#[test]
fn a_server_that_drops_idle_logins_still_gets_the_file_renamed() {
    let mut env = TestEnv::new(1);
    env.set_vsftpd_option("lock_upload_files=NO");
    env.set_vsftpd_option("idle_session_timeout=2");
    let config = direct_config(&env, "direct.toml", "ftp");
    let file = env.random_file("f", 16 * PART);
    let done = send_ok(
        &env,
        &config,
        &file,
        "idle.bin",
        &["--part-size", "1MiB", "--bwlimit", "2MiB"],
    );
    assert_eq!(done["verification"], "read-back", "{done}");
}
