//! Rate limits as users write them: a unit is required, bit rates are understood, and
//! a total limit is shared among the hosts. No timing is asserted: the benchmark
//! judges speed; these tests pin what is accepted and that every byte still arrives.

use crate::harness::{json_lines, md5_file, text, TestEnv};

const PART: u64 = 1 << 20;

#[test]
fn a_bare_rate_is_refused_with_a_hint() {
    let env = TestEnv::new(0);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 1000);
    for (flag, value) in [("--bwlimit", "1000"), ("--bwlimit-total", "5000")] {
        let out = env.send(&file, &config, &[flag, value, "--no-progress"]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.trim_end(),
            format!(
                "relayup: error: {flag} {value}: give a unit, e.g. 5MiB (per second) or 40Mbit"
            ),
            "one line naming the flag, with the hint"
        );
    }
    assert!(
        !env.srv.join("f").exists(),
        "nothing is sent with a refused rate"
    );
    let help = env.relayup(&["send", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--bwlimit-total") && help.contains("Mbit"),
        "{help}"
    );
}

#[test]
fn a_total_limit_through_two_peers_arrives_intact() {
    let env = TestEnv::new(2);
    let config = env.write_config("c.toml", "ftp", &[]);
    let size = 16 * PART + 7;
    let file = env.random_file("total", size);
    // The peers' shares reach their relays in `limit` requests; a relay that did
    // not take one would drop out with a warning, and its parts go elsewhere.
    let out = env.send(
        &file,
        &config,
        &[
            "--json",
            "--part-size",
            "1MiB",
            "--bwlimit-total",
            "8MiB",
            "--bwlimit",
            "40Mbit",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(md5_file(&env.srv.join("total")), md5_file(&file));
    let events = json_lines(&out);
    // Warnings about the setup (plain FTP; no `df` on the test server) are not about
    // a host.
    let about_setup = |m: &str| m.contains("clear text") || m.contains("(df)");
    assert!(
        !events
            .iter()
            .any(|e| e["type"] == "warning" && !about_setup(e["message"].as_str().unwrap())),
        "no host dropped out: {}",
        text(&out)
    );
    let done = events
        .iter()
        .find(|e| e["type"] == "done")
        .expect("a done event");
    let hosts = done["hosts"].as_object().unwrap();
    let bytes = |h: &str| hosts[h]["bytes"].as_u64().unwrap();
    assert_eq!(
        bytes("local") + bytes("p1") + bytes("p2"),
        size,
        "per-host bytes add up to the file: {done}"
    );
    assert!(
        bytes("p1") + bytes("p2") > 0,
        "the peers took part under their shares: {done}"
    );
    env.assert_clean();
}

#[test]
fn a_bit_rate_per_host_is_accepted() {
    let env = TestEnv::new(2);
    let config = env.write_config("c.toml", "sftp", &[]);
    let size = 4 * PART + 3;
    let file = env.random_file("bits", size);
    let out = env.send(
        &file,
        &config,
        &["--json", "--part-size", "1MiB", "--bwlimit", "8Mbit"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(md5_file(&env.srv.join("bits")), md5_file(&file));
    let events = json_lines(&out);
    let done = events.iter().find(|e| e["type"] == "done").unwrap();
    let sum: u64 = done["hosts"]
        .as_object()
        .unwrap()
        .values()
        .map(|h| h["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, size, "{done}");
    env.assert_clean();
}
