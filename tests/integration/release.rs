//! A release: several paths and directories in one send, each file published when
//! verified, a checksum manifest at the end.

use crate::direct::direct_config;
use crate::harness::{json_lines, md5_file, send_args, text, wait_until, TestEnv, PART};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A lab of `peers` peers whose config sends through the append-merge (over
/// `sftp://`).
fn merge_env(peers: usize) -> (TestEnv, PathBuf) {
    let env = TestEnv::new(peers);
    let config = env.write_config("c.toml", "sftp", &[]);
    (env, config)
}

/// A lab of `peers` peers whose config sends by direct writes over FTP alone (no
/// `[merge]`), to a vsftpd that lets writers into one file at once.
fn direct_env(peers: usize) -> (TestEnv, PathBuf) {
    let mut env = TestEnv::new(peers);
    env.set_vsftpd_option("lock_upload_files=NO");
    let config = direct_config(&env, "d.toml", "ftp");
    (env, config)
}

/// `rel/`: nested directories, an empty file, an empty directory, names with spaces,
/// quotes and UTF-8, a link to a file (sent) and a link to a directory (skipped).
fn release_tree(env: &TestEnv) -> (PathBuf, Vec<&'static str>) {
    let rel = env.private.join("rel");
    fs::create_dir_all(rel.join("a/b")).unwrap();
    fs::create_dir_all(rel.join("empty dir")).unwrap();
    let big = env.random_file("big", 3 * PART + 5);
    fs::rename(&big, rel.join("a/b/big.bin")).unwrap();
    fs::write(rel.join("empty"), b"").unwrap();
    fs::write(rel.join("it's \"quoted\" ü.txt"), b"hello\n").unwrap();
    std::os::unix::fs::symlink("empty", rel.join("link")).unwrap();
    std::os::unix::fs::symlink("a", rel.join("dirlink")).unwrap();
    let files = vec![
        "rel/a/b/big.bin",
        "rel/empty",
        "rel/it's \"quoted\" ü.txt",
        "rel/link",
    ];
    (rel, files)
}

/// Sends `rel` with a manifest (`MD5SUMS` or `SHA256SUMS`, whose sums follow its
/// name) and checks it all on the server.
fn send_release(env: &TestEnv, config: &Path, rel: &Path, files: &[&str], manifest: &str) {
    let mut args = vec![
        "send",
        rel.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    args.extend(["--manifest", manifest, "--json", "--part-size", "1MiB"]);
    let out = env.relayup(&args);
    assert!(out.status.success(), "{}", text(&out));
    let events = json_lines(&out);
    // One send for the files (one pre-flight, one plan), one for the manifest.
    let starts = events.iter().filter(|e| e["type"] == "start").count();
    assert_eq!(starts, 2, "{}", text(&out));
    // One `file_done` per file, in the order they were published.
    let mut file_done: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "file_done")
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    file_done.sort_unstable();
    let mut want = files.to_vec();
    want.sort_unstable();
    assert_eq!(file_done, want);
    let end = events.iter().find(|e| e["type"] == "release_done").unwrap();
    assert_eq!(end["files"], files.len(), "{end}");
    assert!(
        text(&out).contains("symbolic link to a directory"),
        "{}",
        text(&out)
    );
    for f in files {
        let source = rel.parent().unwrap().join(f);
        assert_eq!(md5_file(&env.srv.join(f)), md5_file(&source), "{f}");
    }
    assert!(env.srv.join("rel/empty dir").is_dir());
    assert!(!env.srv.join("rel/dirlink").exists());
    // The manifest checks out with md5sum -c (sha256sum -c) where the files are.
    let tool = if manifest == "SHA256SUMS" {
        "sha256sum"
    } else {
        "md5sum"
    };
    let check = Command::new(tool)
        .args(["-c", manifest])
        .current_dir(&env.srv)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&check.stdout)
            .matches(": OK")
            .count(),
        files.len()
    );
    env.assert_clean();
    // Again: everything is already there; nothing is sent.
    let out = env.relayup(&args);
    assert!(out.status.success(), "{}", text(&out));
    let events = json_lines(&out);
    let end = events.iter().find(|e| e["type"] == "release_done").unwrap();
    assert_eq!(
        (end["sent"].as_u64(), end["already_there"].as_u64()),
        (Some(0), Some(files.len() as u64)),
        "{end}"
    );
}

#[test]
fn a_release_through_the_merge() {
    let (env, config) = merge_env(2);
    let (rel, files) = release_tree(&env);
    send_release(&env, &config, &rel, &files, "SHA256SUMS");
}

#[test]
fn a_release_by_direct_writes_over_ftp() {
    let (env, config) = direct_env(2);
    let (rel, files) = release_tree(&env);
    send_release(&env, &config, &rel, &files, "MD5SUMS");
}

#[test]
fn a_release_refuses_dest_and_special_files() {
    let env = TestEnv::new(0);
    let config = env.write_config("c.toml", "ftp", &[]);
    let d = env.private.join("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("f"), b"x").unwrap();
    let out = env.relayup(&[
        "send",
        d.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--dest",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(Command::new("mkfifo")
        .arg(d.join("fifo"))
        .status()
        .unwrap()
        .success());
    let out = env.relayup(&[
        "send",
        d.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("fifo"), "{}", text(&out));
    assert!(!env.srv.join("d").exists(), "nothing sent before the check");
}

/// `many/`: `n` small files of 1–64 KiB in nested directories, one big file, one
/// empty file.
fn many_files(env: &TestEnv, n: usize) -> PathBuf {
    let many = env.private.join("many");
    for i in 0..n {
        let dir = many.join(format!("d{}", i % 7));
        fs::create_dir_all(&dir).unwrap();
        let f = env.random_file("small", 1024 + (i as u64 * 7919) % (63 * 1024));
        fs::rename(&f, dir.join(format!("f{i}.bin"))).unwrap();
    }
    let big = env.random_file("big", 6 * PART + 3);
    fs::rename(&big, many.join("big.bin")).unwrap();
    fs::write(many.join("empty"), b"").unwrap();
    many
}

/// How many files of `local` (a directory sent as a whole) are on the server, and how
/// many there are; each one that is there must be whole.
fn on_server(env: &TestEnv, local: &Path) -> (usize, usize) {
    let (mut there, mut all) = (0, 0);
    let mut stack = vec![local.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            all += 1;
            let theirs = env
                .srv
                .join(p.strip_prefix(local.parent().unwrap()).unwrap());
            if theirs.exists() {
                assert_eq!(md5_file(&theirs), md5_file(&p), "{}", theirs.display());
                there += 1;
            }
        }
    }
    (there, all)
}

/// Every file under `local` is the same on the server; how many there are.
fn assert_same_tree(env: &TestEnv, local: &Path) -> usize {
    let (there, all) = on_server(env, local);
    assert_eq!(there, all, "files missing on the server");
    all
}

/// 300 small files and a big one through 3 peers: one pre-flight and one plan, a
/// small file is never split, every host uploads, and each file lands whole under
/// its name. With `packed` (the append-merge) small files share parts, cut apart on
/// the server; with direct writes each is a part of its own.
fn many_small_files(env: &TestEnv, config: &Path, packed: bool) {
    let many = many_files(env, 300);
    let out = env.relayup(&[
        "send",
        many.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--part-size",
        "1MiB",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let events = json_lines(&out);
    let starts: Vec<_> = events.iter().filter(|e| e["type"] == "start").collect();
    assert_eq!(starts.len(), 1, "one send for the whole release");
    let parts = starts[0]["parts"].as_u64().unwrap();
    if packed {
        // The big file in 7 parts, ~9.6 MB of small files in parts of up to 1 MiB.
        assert!((17..=27).contains(&parts), "{}", starts[0]);
    } else {
        // 300 small files of one part each, the big one in 7 parts, none for the empty.
        assert_eq!(parts, 307, "{}", starts[0]);
    }
    let mut hosts: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "part_done")
        .map(|e| e["host"].as_str().unwrap())
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    assert_eq!(hosts.len(), 4, "every host took parts: {hosts:?}");
    assert_eq!(assert_same_tree(env, &many), 302);
    env.assert_clean();
}

#[test]
fn many_small_files_through_the_merge_in_one_queue() {
    let (env, config) = merge_env(3);
    many_small_files(&env, &config, true);
}

#[test]
fn many_small_files_by_direct_writes_in_one_queue() {
    let (env, config) = direct_env(3);
    many_small_files(&env, &config, false);
}

/// A release killed with SIGKILL in the middle: the files published so far are
/// whole, nothing else is visible, and the same command again sends only what is
/// missing and publishes every file.
fn kill_9_then_resume(env: &TestEnv, config: &Path) {
    let many = many_files(env, 40);
    let big2 = env.random_file("big2", 8 * PART);
    fs::rename(&big2, many.join("d0/big2.bin")).unwrap();
    let args = send_args(&many, config, &["--bwlimit", "2MiB"]);
    let run = env.spawn_send(&args);
    run.wait_parts(12, None);
    let mut run = run;
    run.child.kill().unwrap();
    let _ = run.finish(Duration::from_secs(10));
    wait_until("staged parts are removed", Duration::from_secs(10), || {
        env.staged_files().is_empty()
    });
    // Files are published one by one as they are verified: whatever is there is
    // whole, and the last file is not there yet.
    assert!(!env.srv.join("many/empty").exists());
    let (there, _) = on_server(env, &many);
    assert!(there > 0, "no file published while the release ran");
    // status asks the server: the parts of the published files and those waiting in
    // the temp dir are there.
    let status = env.relayup(&["status", "--json"]);
    let rows = json_lines(&status);
    assert_eq!(rows.len(), 1, "{}", text(&status));
    let server = &rows[0]["server"];
    assert_eq!(server["reachable"], true, "{server}");
    assert!(
        server["parts_there"].as_u64().unwrap() >= there as u64,
        "{server}"
    );
    let run = env.spawn_send(&send_args(&many, config, &[]));
    let (status, events, stderr) = run.finish(Duration::from_secs(180));
    assert!(status.success(), "resume failed: {stderr}");
    let start = events.iter().find(|e| e["type"] == "start").unwrap();
    let total = fs::metadata(many.join("big.bin")).unwrap().len() + 8 * PART;
    let sent = start["bytes"].as_u64().unwrap() - start["resumed_bytes"].as_u64().unwrap();
    assert!(
        sent + 4 * PART <= total,
        "the resumed send sent {sent} bytes again: {start}"
    );
    let end = events.iter().find(|e| e["type"] == "release_done").unwrap();
    assert_eq!(end["already_there"], there, "{end}");
    assert_eq!(assert_same_tree(env, &many), 43);
    env.assert_clean();
}

#[test]
fn a_release_killed_midway_resumes_through_the_merge() {
    let (env, config) = merge_env(2);
    kill_9_then_resume(&env, &config);
}

#[test]
fn a_release_killed_midway_resumes_by_direct_writes() {
    let (env, config) = direct_env(2);
    kill_9_then_resume(&env, &config);
}

/// A file of the release changes while it is sent: by default every other file is
/// published and the send fails naming it; with `--atomic-release` nothing at all is
/// published.
fn one_file_changes(env: &TestEnv, config: &Path, atomic: bool) {
    let rel = env.private.join("rel");
    fs::create_dir_all(&rel).unwrap();
    for (name, size) in [("a.bin", 3 * PART), ("b.bin", 2 * PART), ("c.txt", 10)] {
        let f = env.random_file(name, size);
        fs::rename(&f, rel.join(name)).unwrap();
    }
    let mut extra = vec!["--bwlimit", "1MiB"];
    if atomic {
        extra.push("--atomic-release");
    }
    let run = env.spawn_send(&send_args(&rel, config, &extra));
    run.wait_parts(1, None);
    // A new mtime is a new file, as far as the send knows.
    let b = rel.join("b.bin");
    let f = fs::File::options().write(true).open(&b).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    drop(f);
    let (status, _, stderr) = run.finish(Duration::from_secs(120));
    assert_eq!(status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("b.bin changed during the send"), "{stderr}");
    assert!(!env.srv.join("rel/b.bin").exists());
    for other in ["a.bin", "c.txt"] {
        let there = env.srv.join("rel").join(other);
        if atomic {
            assert!(
                !there.exists(),
                "{other} published despite --atomic-release"
            );
        } else {
            assert_eq!(md5_file(&there), md5_file(&rel.join(other)), "{other}");
        }
    }
    // Sent again once it is stable: what is there already is skipped.
    let out = env.relayup(&[
        "send",
        rel.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let events = json_lines(&out);
    let end = events.iter().find(|e| e["type"] == "release_done").unwrap();
    let expect_there = if atomic { 0 } else { 2 };
    assert_eq!(end["already_there"], expect_there, "{end}");
    assert_eq!(assert_same_tree(env, &rel), 3);
    env.assert_clean();
}

#[test]
fn a_changed_file_holds_back_only_itself() {
    let (env, config) = merge_env(1);
    one_file_changes(&env, &config, false);
}

#[test]
fn atomic_release_publishes_nothing_when_one_file_fails() {
    let (env, config) = merge_env(1);
    one_file_changes(&env, &config, true);
}

#[test]
fn atomic_release_by_direct_writes_publishes_nothing_when_one_file_fails() {
    let (env, config) = direct_env(1);
    one_file_changes(&env, &config, true);
}

/// What is on the server decides per file: an identical file is skipped, a
/// different one stops the send before anything is sent (unless `--overwrite`,
/// which replaces only what differs), and a directory under a file's name is never
/// replaced.
#[test]
fn existing_files_are_compared_one_by_one() {
    let (env, config) = merge_env(1);
    let rel = env.private.join("rel");
    fs::create_dir_all(&rel).unwrap();
    for (name, size) in [("a.bin", 2 * PART), ("b.bin", PART + 1), ("c.txt", 10)] {
        let f = env.random_file(name, size);
        fs::rename(&f, rel.join(name)).unwrap();
    }
    let send = |extra: &[&str]| {
        let mut args = vec![
            "send",
            rel.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--json",
        ];
        args.extend(extra);
        env.relayup(&args)
    };
    assert!(send(&[]).status.success());
    // b changes here: a re-run refuses before sending anything.
    fs::write(rel.join("b.bin"), b"new content").unwrap();
    let out = send(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("rel/b.bin already exists"),
        "{}",
        text(&out)
    );
    assert!(!json_lines(&out).iter().any(|e| e["type"] == "start"));
    // --overwrite sends only b: 11 bytes, and the 10 of c, which shares its part
    // (small files are packed together), but c is not published again.
    let out = send(&["--overwrite"]);
    assert!(out.status.success(), "{}", text(&out));
    let events = json_lines(&out);
    let start = events.iter().find(|e| e["type"] == "start").unwrap();
    assert_eq!(start["bytes"], 21, "{start}");
    let end = events.iter().find(|e| e["type"] == "release_done").unwrap();
    assert_eq!(
        (end["sent"].as_u64(), end["already_there"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(assert_same_tree(&env, &rel), 3);
    // A directory where a file goes is never replaced.
    fs::remove_file(env.srv.join("rel/c.txt")).unwrap();
    fs::create_dir(env.srv.join("rel/c.txt")).unwrap();
    let out = send(&["--overwrite"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("is a directory"), "{}", text(&out));
    env.assert_clean();
}

/// Each file's `file_done` event goes out as soon as the file is published, while
/// the rest of the release is still on its way, and every file has exactly one.
fn announced_as_published(env: &TestEnv, config: &Path) {
    let rel = env.private.join("ann");
    fs::create_dir_all(&rel).unwrap();
    for (name, size) in [("a.txt", 1000), ("big.bin", 8 * PART), ("z.txt", 2000)] {
        let f = env.random_file(name, size);
        fs::rename(&f, rel.join(name)).unwrap();
    }
    let run = env.spawn_send(&send_args(&rel, config, &["--bwlimit", "2MiB"]));
    let (status, events, stderr) = run.finish(Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
    let done = |path: &str| {
        events
            .iter()
            .position(|e| e["type"] == "file_done" && e["path"] == path)
            .unwrap_or_else(|| panic!("no file_done for {path}"))
    };
    let last_part = events
        .iter()
        .rposition(|e| e["type"] == "part_done")
        .unwrap();
    assert!(
        done("ann/a.txt") < last_part,
        "a.txt was announced only at the end"
    );
    let mut paths: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "file_done")
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    paths.sort_unstable();
    assert_eq!(paths, ["ann/a.txt", "ann/big.bin", "ann/z.txt"]);
    assert_eq!(assert_same_tree(env, &rel), 3);
    env.assert_clean();
}

#[test]
fn files_are_announced_as_they_are_published_through_the_merge() {
    let (env, config) = merge_env(1);
    announced_as_published(&env, &config);
}

#[test]
fn files_are_announced_as_they_are_published_by_direct_writes() {
    let (env, config) = direct_env(1);
    announced_as_published(&env, &config);
}
