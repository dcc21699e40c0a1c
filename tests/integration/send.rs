use crate::harness::{md5_file, text, TestEnv};
use std::path::Path;

const PART: u64 = 1 << 20;

/// Sends `file` and checks the server's copy byte for byte (by MD5) and that nothing is left.
fn send_ok(env: &TestEnv, config: &Path, file: &Path, dest: &str, extra: &[&str]) -> String {
    let mut args = vec!["send", file.to_str().unwrap(), "--config", config.to_str().unwrap(), "--dest", dest, "--no-progress"];
    args.extend_from_slice(extra);
    let out = env.relayup(&args);
    assert!(out.status.success(), "send of {dest} failed:\n{}", text(&out));
    let on_server = env.srv.join(dest);
    assert_eq!(md5_file(&on_server), md5_file(file), "{dest}: server copy differs from the source");
    env.assert_clean();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn sizes_over(scheme: &str) {
    let env = TestEnv::new(3);
    let config = env.write_config("c.toml", scheme, &[]);
    // 4 hosts: 0 bytes, 1 byte, fewer bytes than hosts, one part - 1, one part, one part + 1.
    for size in [0, 1, 3, PART - 1, PART, PART + 1, 3 * PART + 7] {
        let file = env.random_file(&format!("f{size}"), size);
        for strategy in ["adaptive", "equal"] {
            let dest = format!("{scheme}-{strategy}-{size}.bin");
            let mut extra = vec!["--strategy", strategy];
            if strategy == "adaptive" {
                extra.extend(["--part-size", "1MiB"]);
            }
            send_ok(&env, &config, &file, &dest, &extra);
        }
    }
}

#[test]
fn edge_sizes_arrive_intact_over_ftp() {
    sizes_over("ftp");
}

#[test]
fn edge_sizes_arrive_intact_over_sftp() {
    sizes_over("sftp");
}

#[test]
fn big_file_both_strategies_ftp_and_sftp() {
    let env = TestEnv::new(3);
    let file = env.random_file("big", 64 * PART + 12345);
    // The peers log in as their own users, who cannot read the source.
    let out = std::process::Command::new("runuser")
        .args(["-u", crate::harness::PEER_USERS[0], "--", "test", "-r"])
        .arg(&file)
        .status()
        .unwrap();
    assert!(!out.success(), "test setup: peers must not be able to read the source");
    for scheme in ["ftp", "sftp"] {
        let config = env.write_config(&format!("{scheme}.toml"), scheme, &[]);
        for strategy in ["adaptive", "equal"] {
            let mut extra = vec!["--strategy", strategy];
            if strategy == "adaptive" {
                extra.extend(["--part-size", "8MiB"]);
            }
            let stderr = send_ok(&env, &config, &file, &format!("big-{scheme}-{strategy}"), &extra);
            for host in ["local", "p1", "p2", "p3"] {
                assert!(stderr.contains(host), "report names {host}: {stderr}");
            }
        }
    }
}
