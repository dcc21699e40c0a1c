//! The Windows build of relayup, run under Wine, as the client of a send.

use crate::harness::{md5_file, text, TestEnv, PART};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// The Windows build, which `.ci/run` makes before the tests
/// (`cargo build --target x86_64-pc-windows-gnu --bins`).
fn windows_exe() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let exe = target.join("x86_64-pc-windows-gnu/debug/relayup.exe");
    assert!(
        exe.exists(),
        "{} is missing: build it first with `cargo build --target x86_64-pc-windows-gnu --bins` (.ci/run does)",
        exe.display()
    );
    exe
}

/// `relayup.exe ARGS` under Wine (scripts/wine/run).
fn wine_relayup(env: &TestEnv, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/wine/run"))
        .arg(windows_exe())
        .args(args)
        .env_remove("RELAYUP_CONFIG")
        .env("LOCALAPPDATA", env.root.join("wine-state"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `relayup.exe send FILE --config CONFIG --json EXTRA...` under Wine: it succeeds
/// and the server has the file.
fn send_under_wine(env: &TestEnv, config: &std::path::Path, size: u64, extra: &[&str]) -> Output {
    let file = env.random_file("w", size);
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "send".as_ref(),
        file.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
        "--json".as_ref(),
    ];
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    let out = wine_relayup(env, &args);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(md5_file(&env.srv.join("w")), md5_file(&file));
    env.assert_clean();
    out
}

#[test]
fn the_windows_client_under_wine_sends_a_file_verified() {
    let mut env = TestEnv::new(0);
    env.set_vsftpd_option("lock_upload_files=NO");
    let config = crate::direct::direct_config(&env, "d.toml", "ftp");
    send_under_wine(&env, &config, 5 * PART + 3, &[]);
}

#[test]
fn the_windows_client_under_wine_sends_through_linux_peers() {
    let env = TestEnv::new(2);
    let config = env.write_config("c.toml", "ftp", &[]);
    // Paced, so that every host gets parts even on a busy machine.
    let out = send_under_wine(
        &env,
        &config,
        12 * PART + 3,
        &["--part-size", "1MiB", "--bwlimit", "4MiB"],
    );
    let hosts = crate::harness::hosts_of_done(&out);
    assert_eq!(hosts.len(), 3, "every host carried bytes: {hosts:?}");
}
