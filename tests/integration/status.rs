//! `relayup status` asks the servers what they hold of each unfinished send.

use crate::direct::direct_config;
use crate::harness::{json_lines, send_args, text, wait_until, TestEnv, PART};
use std::path::Path;
use std::time::Duration;

/// Starts a slow send, waits until `ready` says enough is on the server, kills it.
fn interrupted_send(
    env: &TestEnv,
    config: &Path,
    ready: impl FnMut() -> bool,
) -> std::path::PathBuf {
    let file = env.random_file("f", 24 * PART);
    let mut run = env.spawn_send(&send_args(&file, config, &["--bwlimit", "4MiB"]));
    wait_until("parts on the server", Duration::from_secs(60), ready);
    run.child.kill().unwrap();
    let _ = run.finish(Duration::from_secs(10));
    file
}

fn status_row(env: &TestEnv, offline: bool) -> serde_json::Value {
    let mut args = vec!["status", "--json"];
    if offline {
        args.push("--offline");
    }
    let out = env.relayup(&args);
    assert!(out.status.success(), "{}", text(&out));
    let rows = json_lines(&out);
    assert_eq!(rows.len(), 1, "{}", text(&out));
    rows[0].clone()
}

fn verified_in_journal(env: &TestEnv) -> usize {
    std::fs::read_dir(env.root.join("state/relayup"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .map(|j| j["verified"].as_array().map_or(0, |v| v.len()))
        .max()
        .unwrap_or(0)
}

fn check_then_resume(env: &TestEnv, config: &Path, file: &Path, kind: &str) {
    let row = status_row(env, false);
    let server = &row["server"];
    assert_eq!(server["kind"], kind, "{row}");
    assert_eq!(server["reachable"], true, "{row}");
    let there = server["parts_there"].as_u64().unwrap();
    assert!((2..24).contains(&there), "{row}");
    assert_eq!(server["bytes_there"].as_u64(), Some(there * PART), "{row}");
    assert!(
        server["missing"].as_str().is_some_and(|m| m != "-"),
        "{row}"
    );
    assert_eq!(
        server["running"],
        serde_json::Value::Null,
        "a killed run is not running: {row}"
    );
    // The table says the same.
    let out = env.relayup(&["status"]);
    assert!(
        text(&out).contains(&format!("{there}/24 parts")),
        "{}",
        text(&out)
    );
    // Offline: the journal only.
    assert!(status_row(env, true).get("server").is_none());
    let out = env.send(file, config, &["--part-size", "1MiB", "--no-progress"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = env.relayup(&["status"]);
    assert!(text(&out).contains("no unfinished sends"), "{}", text(&out));
}

#[test]
fn status_shows_what_a_direct_send_left_on_the_server() {
    let mut env = TestEnv::new(1);
    env.set_vsftpd_option("lock_upload_files=NO");
    let config = direct_config(&env, "d.toml", "ftp");
    let file = interrupted_send(&env, &config, || verified_in_journal(&env) >= 2);
    check_then_resume(&env, &config, &file, "direct");
}

#[test]
fn status_shows_what_a_merge_send_left_on_the_server() {
    let env = TestEnv::new(1);
    let config = env.write_config("c.toml", "ftp", &[]);
    let parts_there = || {
        env.temp_dirs()
            .iter()
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
            .count()
    };
    let file = interrupted_send(&env, &config, || parts_there() >= 2);
    check_then_resume(&env, &config, &file, "merge");
}
