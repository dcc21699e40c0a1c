//! Credentials and hostile input: nothing leaks, nothing is injected.

use crate::harness::{md5_file, text, TestEnv, SERVER_PASSWORD};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const PART: u64 = 1 << 20;

fn send(env: &TestEnv, config: &Path, file: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--no-progress"];
    args.extend_from_slice(extra);
    env.send(file, config, &args)
}

#[test]
fn ftps_against_vsftpd_with_tls() {
    let env = TestEnv::new(2);
    let config = env.write_config("c.toml", "ftps", &[]);
    let file = env.random_file("f", 5 * PART + 3);
    let out = send(&env, &config, &file, &["--part-size", "1MiB"]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("clear text"),
        "no plain-FTP warning for ftps: {stderr}"
    );
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
    env.assert_clean();

    // Without the CA, the self-signed certificate is refused.
    let no_ca = env.private.join("no-ca.toml");
    let text_cfg = fs::read_to_string(&config).unwrap();
    let stripped: String = text_cfg
        .lines()
        .filter(|l| !l.starts_with("ca_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&no_ca, stripped).unwrap();
    let out = send(&env, &no_ca, &file, &["--dest", "g"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TLS"),
        "{}",
        text(&out)
    );
    assert!(!env.srv.join("g").exists());
}

#[test]
fn plain_ftp_warns_once() {
    let env = TestEnv::new(1);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 1000);
    let out = send(&env, &config, &file, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("clear text").count(), 1, "{stderr}");
}

#[test]
fn the_password_is_in_no_command_line_or_environment_during_a_send() {
    let env = TestEnv::new(3);
    for scheme in ["ftp", "sftp"] {
        let config = env.write_config(&format!("{scheme}.toml"), scheme, &[]);
        let file = env.random_file("f", 12 * PART);
        let run = env.spawn_send(&[
            file.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--part-size",
            "1MiB",
            "--bwlimit",
            "2MiB",
            "--dest",
            scheme,
        ]);
        run.wait_parts(3, None);
        let mut scanned = 0;
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            if !entry
                .file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
            {
                continue;
            }
            for what in ["cmdline", "environ"] {
                if let Ok(bytes) = fs::read(entry.path().join(what)) {
                    scanned += 1;
                    let s = String::from_utf8_lossy(&bytes);
                    assert!(
                        !s.contains(SERVER_PASSWORD),
                        "password in /proc/{}/{what}: {s}",
                        entry.file_name().to_string_lossy()
                    );
                }
            }
        }
        assert!(scanned > 20);
        let relays = std::process::Command::new("pgrep")
            .args(["-f", "relayup relay"])
            .output()
            .unwrap();
        assert!(
            !relays.stdout.is_empty(),
            "relays were running while /proc was read"
        );
        let (status, events, stderr) = run.finish(Duration::from_secs(120));
        assert!(status.success(), "{stderr}");
        let all = format!("{stderr}{events:?}");
        assert!(!all.contains(SERVER_PASSWORD), "password in output");
        // Nothing on the peers' disks either.
        for i in 0..3 {
            for e in fs::read_dir(env.staging(i)).into_iter().flatten().flatten() {
                assert!(!fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .contains(SERVER_PASSWORD));
            }
        }
    }
}

#[test]
fn hostile_destination_names_arrive_verbatim_or_are_refused() {
    let env = TestEnv::new(1);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 2 * PART + 1);
    let pwned = env.root.join("pwned");
    let names = [
        "with space.bin".to_string(),
        "it's \"quoted\".bin".to_string(),
        format!("$(touch {}).bin", pwned.display()).replace('/', "_"),
        "`touch pwned`.bin".to_string(),
        "a;b&&c|d.bin".to_string(),
        "-leading-dash.bin".to_string(),
        "ünïcödé.bin".to_string(),
        "*?[glob].bin".to_string(),
    ];
    for name in &names {
        // `--dest=NAME`: with a space, `--dest -x` would read -x as an option (clap).
        let out = send(
            &env,
            &config,
            &file,
            &[&format!("--dest={name}"), "--part-size", "1MiB"],
        );
        assert!(out.status.success(), "{name}: {}", text(&out));
        assert_eq!(md5_file(&env.srv.join(name)), md5_file(&file), "{name}");
    }
    assert!(
        !pwned.exists() && !env.srv.join("pwned").exists(),
        "a name was run as a command"
    );
    env.assert_clean();
    for bad in [
        "../up",
        "a/b",
        "/etc/passwd",
        "..",
        ".",
        "new\nline",
        "cr\rlf",
        "",
    ] {
        let out = send(&env, &config, &file, &[&format!("--dest={bad}")]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out));
    }
}

#[test]
fn staging_and_temp_dirs_are_private() {
    let env = TestEnv::new(1);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 10 * PART);
    let run = env.spawn_send(&[
        file.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--part-size",
        "1MiB",
        "--bwlimit",
        "1MiB",
    ]);
    run.wait_parts(1, Some("p1"));
    let stage = env.staging(0);
    assert_eq!(
        fs::metadata(&stage).unwrap().permissions().mode() & 0o777,
        0o700,
        "staging dir"
    );
    let mut staged_seen = 0;
    for _ in 0..200 {
        for e in fs::read_dir(&stage).unwrap().flatten() {
            if let Ok(m) = e.metadata() {
                assert_eq!(
                    m.permissions().mode() & 0o777,
                    0o600,
                    "staged file {:?}",
                    e.file_name()
                );
                staged_seen += 1;
            }
        }
        if staged_seen > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(staged_seen > 0, "saw a staged file");
    let tmp = fs::read_dir(&env.srv)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(".relayup-"))
        .unwrap();
    assert_eq!(
        tmp.metadata().unwrap().permissions().mode() & 0o077,
        0,
        "server temp dir is private"
    );
    let (status, _, stderr) = run.finish(Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
}

#[test]
fn a_changed_peer_host_key_stops_the_send_and_an_unknown_one_can_be_accepted() {
    let env = TestEnv::new(2);
    let config = env.write_config("c.toml", "ftp", &[]);
    let kh = env.private.join("known_hosts");
    let original = fs::read_to_string(&kh).unwrap();
    let p2 = format!("[127.0.0.1]:{}", env.peer_ports[1]);
    let p1_key = original
        .lines()
        .find(|l| l.starts_with(&format!("[127.0.0.1]:{} ", env.peer_ports[0])))
        .unwrap();
    let forged_key = p1_key
        .split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ");
    // p2 now presents a key other than the one known for it.
    let changed: String = original
        .lines()
        .map(|l| {
            if l.starts_with(&format!("{p2} ")) {
                format!("{p2} {forged_key}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(&kh, &changed).unwrap();
    let file = env.random_file("f", 4 * PART);
    let out = send(&env, &config, &file, &["--part-size", "1MiB"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("HOST KEY CHANGED") && stderr.contains("p2"),
        "{stderr}"
    );
    assert!(!env.srv.join("f").exists());
    assert!(
        fs::read_dir(env.staging(1)).is_err(),
        "nothing was staged on p2"
    );
    let out = send(
        &env,
        &config,
        &file,
        &["--part-size", "1MiB", "--accept-new-host-keys"],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "a changed key is never accepted: {}",
        text(&out)
    );

    // Unknown key: refused with the fingerprint, then accepted on request and remembered.
    let unknown: String = original
        .lines()
        .filter(|l| !l.starts_with(&format!("{p2} ")))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&kh, &unknown).unwrap();
    let out = send(&env, &config, &file, &["--part-size", "1MiB"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--accept-new-host-keys"),
        "{}",
        text(&out)
    );
    let out = send(
        &env,
        &config,
        &file,
        &["--part-size", "1MiB", "--accept-new-host-keys"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(fs::read_to_string(&kh)
        .unwrap()
        .contains(&format!("{p2} ssh-ed25519 ")));
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
}
