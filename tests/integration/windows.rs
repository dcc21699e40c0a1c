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

/// A Linux client sends through a peer whose relay is the Windows build under Wine
/// (`relayup.exe relay`, started by a wrapper that runs it with Wine), staging in a
/// directory Wine maps (`/…` is `Z:\…` there): the relay greets, stages, uploads,
/// and the file is verified on the server.
#[test]
fn a_linux_client_sends_through_a_windows_relay_under_wine() {
    use std::os::unix::fs::PermissionsExt;
    let exe = windows_exe();
    let env = TestEnv::new(1);
    let user = crate::harness::PEER_USERS[0];
    // The peer's own Wine prefix (Wine takes only one its user owns).
    let prefix = env.root.join("wine-p1");
    std::fs::create_dir(&prefix).unwrap();
    let chown = Command::new("chown")
        .arg(user)
        .arg(&prefix)
        .status()
        .unwrap();
    assert!(chown.success());
    let wrapper = env.root.join("pub/wine-relayup");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nRELAYUP_WINEPREFIX={} exec {} {} \"$@\"\n",
            prefix.display(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/wine/run"),
            exe.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_peer = |args: &[&std::ffi::OsStr]| {
        Command::new("runuser")
            .args(["-u", user, "--"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // A new Wine prefix takes a while to make: before the send, not during it.
    let first = as_peer(&[wrapper.as_os_str(), "--version".as_ref()]);
    assert!(first.status.success(), "{}", text(&first));
    let config = env.write_config("c.toml", "ftp", &[]);
    crate::harness::edit_file(&config, |t| {
        t.replace(
            &format!("relayup = \"{}\"", env.root.join("pub/relayup").display()),
            &format!("relayup = \"{}\"", wrapper.display()),
        )
    });
    let file = env.random_file("w", 4 * PART + 9);
    let out = env.send(
        &file,
        &config,
        &["--part-size", "1MiB", "--bwlimit", "2MiB", "--json"],
    );
    // Wine's server for that prefix stops with the test.
    let _ = as_peer(&[
        "env".as_ref(),
        format!("WINEPREFIX={}", prefix.display()).as_ref(),
        "wineserver".as_ref(),
        "-k".as_ref(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        crate::harness::json_lines(&out)
            .iter()
            .any(|e| e["type"] == "part_done" && e["host"] == "p1"),
        "the Wine relay carried parts: {}",
        text(&out)
    );
    assert_eq!(md5_file(&env.srv.join("w")), md5_file(&file));
    env.assert_clean();
}
