use crate::harness::{json_lines, md5_file, text, TestEnv};
use std::fs;
use std::path::Path;

const PART: u64 = 1 << 20;

/// Sends `file` and checks the server's copy byte for byte (by MD5) and that nothing is left.
fn send_ok(env: &TestEnv, config: &Path, file: &Path, dest: &str, extra: &[&str]) -> String {
    let mut args = vec!["--dest", dest, "--no-progress"];
    args.extend_from_slice(extra);
    let out = env.send(file, config, &args);
    assert!(
        out.status.success(),
        "send of {dest} failed:\n{}",
        text(&out)
    );
    let on_server = env.srv.join(dest);
    assert_eq!(
        md5_file(&on_server),
        md5_file(file),
        "{dest}: server copy differs from the source"
    );
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
    assert!(
        !out.success(),
        "test setup: peers must not be able to read the source"
    );
    for scheme in ["ftp", "sftp"] {
        let config = env.write_config(&format!("{scheme}.toml"), scheme, &[]);
        for strategy in ["adaptive", "equal"] {
            let mut extra = vec!["--strategy", strategy];
            if strategy == "adaptive" {
                extra.extend(["--part-size", "8MiB"]);
            }
            let stderr = send_ok(
                &env,
                &config,
                &file,
                &format!("big-{scheme}-{strategy}"),
                &extra,
            );
            for host in ["local", "p1", "p2", "p3"] {
                assert!(stderr.contains(host), "report names {host}: {stderr}");
            }
        }
    }
}

#[test]
fn json_lines_describe_the_send() {
    let env = TestEnv::new(2);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("j", 5 * PART + 3);
    let out = env.send(&file, &config, &["--json", "--part-size", "1MiB"]);
    assert!(out.status.success(), "{}", text(&out));
    let lines = json_lines(&out);
    let kinds: Vec<&str> = lines.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"start"));
    assert_eq!(kinds.last(), Some(&"done"));
    assert_eq!(
        kinds.iter().filter(|k| **k == "part_done").count(),
        6,
        "{kinds:?}"
    );
    assert!(kinds.contains(&"merged"));
    let done = lines.last().unwrap();
    let md5 = md5_file(&file);
    assert_eq!(done["md5"], md5.as_str());
    assert_eq!(done["bytes"], 5 * PART + 3);
    let hosts = done["hosts"].as_object().unwrap();
    let mut names: Vec<&String> = hosts.keys().collect();
    names.sort();
    assert_eq!(names, ["local", "p1", "p2"]);
    let sum: u64 = hosts.values().map(|h| h["bytes"].as_u64().unwrap()).sum();
    assert_eq!(sum, 5 * PART + 3, "per-host bytes add up to the file");
    // Each part's checksum is the XXH3-128 of its bytes (1 MiB parts).
    let data = fs::read(&file).unwrap();
    for l in lines.iter().filter(|v| v["type"] == "part_done") {
        let i = l["part"].as_u64().unwrap() as usize;
        let bytes = &data[i * PART as usize..((i + 1) * PART as usize).min(data.len())];
        assert_eq!(
            l["xxh3"].as_str().unwrap(),
            format!("{:032x}", xxhash_rust::xxh3::xxh3_128(bytes))
        );
    }
    assert_eq!(md5_file(&env.srv.join("j")), md5);
}

#[test]
fn dry_run_prints_the_plan_and_sends_nothing() {
    let env = TestEnv::new(3);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("d", 10 * PART);
    for (strategy, parts) in [("adaptive", "10 part(s)"), ("equal", "one share per host")] {
        let mut args = vec!["--dry-run", "--strategy", strategy];
        if strategy == "adaptive" {
            args.extend(["--part-size", "1MiB"]);
        }
        let out = env.send(&file, &config, &args);
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(parts), "{stdout}");
        assert!(stdout.contains("local, p1, p2, p3"), "{stdout}");
        if strategy == "equal" {
            for host in ["local", "p1", "p2", "p3"] {
                assert!(
                    stdout.contains(&format!("-> {host}\n")),
                    "{host} gets a share: {stdout}"
                );
            }
        }
    }
    assert_eq!(
        std::fs::read_dir(&env.srv).unwrap().count(),
        0,
        "dry run touched the server"
    );
}

#[test]
fn dry_run_json_prints_the_plan_as_one_event() {
    let env = TestEnv::new(2);
    let config = env.write_config("c.toml", "ftp", &[]);
    let size = 10 * PART + 5;
    let file = env.random_file("d", size);
    for strategy in ["adaptive", "equal"] {
        let mut args = vec!["--dry-run", "--json", "--strategy", strategy];
        if strategy == "adaptive" {
            args.extend(["--part-size", "1MiB"]);
        }
        let out = env.send(&file, &config, &args);
        assert!(out.status.success(), "{}", text(&out));
        let lines = json_lines(&out);
        assert_eq!(lines.len(), 1, "one plan event: {}", text(&out));
        let plan = &lines[0];
        assert_eq!(plan["type"], "plan");
        assert_eq!(plan["strategy"], strategy);
        assert_eq!(plan["bytes"], size);
        assert_eq!(plan["dest"], "d");
        assert_eq!(plan["hosts"], serde_json::json!(["local", "p1", "p2"]));
        let id = plan["upload_id"].as_str().unwrap();
        assert_eq!(id.len(), 16, "{plan}");
        assert!(plan["temp_dir"]
            .as_str()
            .unwrap()
            .ends_with(&format!(".relayup-{id}")));
        // The parts cover the file in order, without gaps; `equal` names each one's host.
        let mut next = 0;
        for (i, p) in plan["parts"].as_array().unwrap().iter().enumerate() {
            assert_eq!(p["index"], i);
            assert_eq!(p["offset"], next);
            next += p["len"].as_u64().unwrap();
            match strategy {
                "equal" => assert!(["local", "p1", "p2"].contains(&p["host"].as_str().unwrap())),
                _ => assert!(p["host"].is_null(), "{p}"),
            }
        }
        assert_eq!(next, size);
        // The same id as the text plan's last line.
        let args: Vec<&str> = args.into_iter().filter(|a| *a != "--json").collect();
        let out = env.send(&file, &config, &args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout
                .lines()
                .last()
                .unwrap()
                .starts_with(&format!("upload id: {id} ")),
            "{stdout}"
        );
    }
    assert_eq!(
        std::fs::read_dir(&env.srv).unwrap().count(),
        0,
        "dry run touched the server"
    );
}

#[test]
fn a_failed_json_command_ends_with_an_error_event() {
    let env = TestEnv::new(1);
    let config = env.write_config("c.toml", "ftp", &[]);
    let cfg = config.to_str().unwrap();
    // The message is stderr's error line, and the exit code is the process's.
    let ends_with_error = |out: &std::process::Output, code: i32| -> serde_json::Value {
        assert_eq!(out.status.code(), Some(code), "{}", text(out));
        let last = json_lines(out)
            .pop()
            .unwrap_or_else(|| panic!("no JSON: {}", text(out)));
        assert_eq!(last["type"], "error", "{last}");
        assert_eq!(last["exit_code"], code, "{last}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr
            .lines()
            .find(|l| l.starts_with("relayup: error: "))
            .unwrap();
        assert_eq!(
            last["message"],
            line.strip_prefix("relayup: error: ").unwrap()
        );
        last
    };

    // Before anything started: the only line.
    let out = env.relayup(&["send", "/nonexistent/file", "--config", cfg, "--json"]);
    let err = ends_with_error(&out, 2);
    assert!(err["message"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/file"));
    assert_eq!(json_lines(&out).len(), 1);

    // After pre-flight: the plain-FTP warning said before comes first, as an event.
    let file = env.random_file("f", 1000);
    std::fs::write(env.srv.join("taken"), "precious").unwrap();
    let out = env.send(&file, &config, &["--dest", "taken", "--json"]);
    let err = ends_with_error(&out, 2);
    assert!(err["message"].as_str().unwrap().contains("--overwrite"));
    let lines = json_lines(&out);
    assert_eq!(lines[0]["type"], "warning");
    assert!(lines[0]["message"].as_str().unwrap().contains("clear text"));

    // Not only send: peers check with a peer that cannot be reached exits 3.
    let ghost = env.write_config(
        "ghost.toml",
        "ftp",
        &[(
            "ghost",
            "host = \"127.0.0.1\"\nport = 1\nuser = \"x\"".into(),
        )],
    );
    let out = env.peers_check(&ghost, &["--no-rate"]);
    let err = ends_with_error(&out, 3);
    assert!(
        err["message"].as_str().unwrap().contains("have a problem"),
        "{err}"
    );
    assert!(json_lines(&out)
        .iter()
        .any(|r| r["name"] == "ghost" && r["ok"] == false));

    // Without --json, stdout has no JSON and stderr the same one line.
    let out = env.relayup(&["send", "/nonexistent/file", "--config", cfg]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_input_exits_2_with_a_named_error() {
    let env = TestEnv::new(0);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("x", 10);
    let cfg = config.to_str().unwrap();
    let f = file.to_str().unwrap();
    let typo = env.private.join("typo.toml");
    std::fs::write(
        &typo,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("[ssh]\n", "[ssh]\nidentiy = \"x\"\n"),
    )
    .unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["send", f, "--config", typo.to_str().unwrap()],
            "identiy",
        ),
        (
            vec!["send", f, "--config", "/nonexistent/peers.toml"],
            "/nonexistent/peers.toml",
        ),
        (
            vec!["send", "/nonexistent/file", "--config", cfg],
            "/nonexistent/file",
        ),
        (
            vec!["send", f, "--config", cfg, "--part-size", "12 parsecs"],
            "--part-size",
        ),
        (
            vec!["send", f, "--config", cfg, "--dest", "../escape"],
            "upload directory",
        ),
        (
            vec!["send", f, "--config", cfg, "--dest", "a/b"],
            "upload directory",
        ),
        (
            vec!["send", f, "--config", cfg, "--strategy", "fastest"],
            "fastest",
        ),
    ];
    for (args, needle) in cases {
        let out = env.relayup(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(needle),
            "{args:?}: expected {needle:?} in {stderr}"
        );
        assert!(
            stderr.lines().filter(|l| l.contains("error")).count() == 1,
            "one error line: {stderr}"
        );
    }
    assert_eq!(std::fs::read_dir(&env.srv).unwrap().count(), 0);
}

#[test]
fn failing_peers_are_left_out_and_the_send_goes_on() {
    let env = TestEnv::new(2);
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = env.write_config(
        "c.toml",
        "ftp",
        &[
            ("dead", format!("host = \"127.0.0.1\"\nport = {dead_port}\nuser = \"nobody\"")),
            (
                "norelay",
                format!(
                    "host = \"127.0.0.1\"\nport = {}\nuser = \"{}\"\nrelayup = \"/nonexistent/relayup\"",
                    env.peer_ports[0],
                    crate::harness::PEER_USERS[0]
                ),
            ),
        ],
    );
    let file = env.random_file("f", 3 * PART);
    let stderr = send_ok(&env, &config, &file, "f.bin", &["--part-size", "1MiB"]);
    assert!(
        stderr.contains("peer dead left out") && stderr.contains("cannot connect"),
        "{stderr}"
    );
    assert!(
        stderr.contains("peer norelay left out") && stderr.contains("not found"),
        "{stderr}"
    );
}

#[test]
fn existing_destination_is_refused_unless_overwrite() {
    let env = TestEnv::new(1);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 1000);
    let dest = env.srv.join("taken");
    std::fs::write(&dest, "precious").unwrap();
    let out = env.send(&file, &config, &["--dest", "taken", "--no-progress"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--overwrite"));
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "precious");
    send_ok(&env, &config, &file, "taken", &["--overwrite"]);
}

#[test]
fn unknown_host_key_stops_with_its_fingerprint() {
    let env = TestEnv::new(1);
    let config = env.write_config("c.toml", "ftp", &[]);
    let empty = env.private.join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let text_cfg = std::fs::read_to_string(&config).unwrap();
    let kh = env.private.join("known_hosts");
    std::fs::write(
        &config,
        text_cfg.replace(kh.to_str().unwrap(), empty.to_str().unwrap()),
    )
    .unwrap();
    let file = env.random_file("f", 1000);
    let out = env.send(&file, &config, &["--no-progress"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SHA256:") && stderr.contains("ssh-keyscan"),
        "{stderr}"
    );
    assert!(!env.srv.join("f").exists());
}

#[test]
fn peers_check_reports_every_login() {
    let env = TestEnv::new(2);
    let config = env.write_config("c.toml", "ftp", &[]);
    let out = env.relayup(&["peers", "check", "--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in ["p1", "p2", "server (merge)", "server (upload)"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {stdout}"));
        assert!(!line.contains("NO"), "{line}");
        if name != "server (merge)" {
            assert!(line.contains(" MB/s"), "an upload rate: {line}");
        }
    }
    assert!(
        stdout.contains("upload rate, all 3 hosts at once"),
        "{stdout}"
    );
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")), "{stdout}");

    let config = env.write_config(
        "bad.toml",
        "ftp",
        &[(
            "ghost",
            "host = \"127.0.0.1\"\nport = 1\nuser = \"x\"".into(),
        )],
    );
    let out = env.peers_check(&config, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let rows = json_lines(&out);
    let ghost = rows.iter().find(|r| r["name"] == "ghost").unwrap();
    assert_eq!(ghost["reachable"], false);
    assert_eq!(ghost["ok"], false);
    assert!(rows.iter().filter(|r| r["ok"] == true).count() == 4);
    for p in ["p1", "p2", "server (upload)"] {
        let row = rows.iter().find(|r| r["name"] == p).unwrap();
        assert_eq!(row["server_login"], true, "{row}");
        // Every host really uploaded: its rate was measured.
        assert!(row["upload_bytes_per_sec"].as_f64().unwrap() > 0.0, "{row}");
        if p != "server (upload)" {
            assert!(row["staging_free_bytes"].as_u64().unwrap() > 0, "{row}");
        }
    }
    // The probe left nothing behind: no temp dir on the server, nothing staged.
    env.assert_clean();
    let out = env.relayup(&[
        "peers",
        "check",
        "--config",
        env.private.join("c.toml").to_str().unwrap(),
        "--json",
        "--no-rate",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    for row in json_lines(&out) {
        assert!(row["upload_bytes_per_sec"].is_null(), "--no-rate: {row}");
    }

    // A wrong server password: every peer's relay is refused by the server.
    let wrong = env.private.join("wrong.pass");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let good = std::fs::read_to_string(env.private.join("c.toml")).unwrap();
    let bad = env.private.join("badpw.toml");
    std::fs::write(
        &bad,
        good.replace(
            env.private.join("server.pass").to_str().unwrap(),
            wrong.to_str().unwrap(),
        ),
    )
    .unwrap();
    let out = env.peers_check(&bad, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let rows = json_lines(&out);
    for name in ["p1", "server (upload)"] {
        let row = rows.iter().find(|r| r["name"] == name).unwrap();
        assert_eq!(row["server_login"], false, "{row}");
    }
}
