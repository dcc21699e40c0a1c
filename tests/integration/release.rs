//! A release: several paths and directories in one send, each file published when
//! verified, a checksum manifest at the end.

use crate::direct::direct_config;
use crate::harness::{json_lines, md5_file, text, TestEnv, PART};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

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

fn send_release(env: &TestEnv, config: &Path, rel: &Path, files: &[&str]) {
    let mut args = vec![
        "send",
        rel.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    args.extend(["--manifest", "MD5SUMS", "--json", "--part-size", "1MiB"]);
    let out = env.relayup(&args);
    assert!(out.status.success(), "{}", text(&out));
    let events = json_lines(&out);
    let file_done: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "file_done")
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(file_done, files);
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
    // The manifest checks out with md5sum -c where the files are.
    let check = Command::new("md5sum")
        .args(["-c", "MD5SUMS"])
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
    let env = TestEnv::new(2);
    let config = env.write_config("c.toml", "sftp", &[]);
    let (rel, files) = release_tree(&env);
    send_release(&env, &config, &rel, &files);
}

#[test]
fn a_release_by_direct_writes_over_ftp() {
    let mut env = TestEnv::new(2);
    env.set_vsftpd_option("lock_upload_files=NO");
    let config = direct_config(&env, "d.toml", "ftp");
    let (rel, files) = release_tree(&env);
    send_release(&env, &config, &rel, &files);
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
