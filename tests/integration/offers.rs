//! What the server offers (`FEAT`), as `peers check` reports it: vsftpd (REST, no
//! HASH) and ProFTPD with `mod_digest` (HASH with MD5), and a send to that ProFTPD.

use crate::harness::{json_lines, md5_file, text, TestEnv, SERVER_PASSWORD, SERVER_USER};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;

const PART: u64 = 1 << 20;

/// `peers check --json --no-rate`'s `server (upload)` row, after checking that the
/// other rows carry no `offers`.
fn upload_row(env: &TestEnv, config: &Path) -> serde_json::Value {
    let out = env.peers_check(config, &["--no-rate"]);
    assert!(out.status.success(), "{}", text(&out));
    let rows = json_lines(&out);
    for r in rows.iter().filter(|r| r["name"] != "server (upload)") {
        assert!(r.get("offers").is_none(), "{r}");
    }
    rows.into_iter()
        .find(|r| r["name"] == "server (upload)")
        .expect("a server (upload) row")
}

#[test]
fn peers_check_reports_that_vsftpd_offers_rest_and_no_hash_and_sftp_offsets() {
    let env = TestEnv::new(1);
    let config = env.write_config("c.toml", "ftp", &[]);
    let row = upload_row(&env, &config);
    assert_eq!(row["server_login"], true, "{row}");
    let offers = &row["offers"];
    assert_eq!(offers["rest"], true, "{row}");
    assert_eq!(offers["hash"], serde_json::json!([]), "{row}");
    assert_eq!(offers["xmd5"], false, "{row}");
    assert_eq!(offers["sftp_extensions"], serde_json::Value::Null, "{row}");
    assert!(
        row.get("free_bytes").is_none(),
        "FTP does not tell free space: {row}"
    );

    // The table's offers column, on the upload row only.
    let out = env.relayup(&[
        "peers",
        "check",
        "--config",
        config.to_str().unwrap(),
        "--no-rate",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let header = stdout.lines().next().unwrap();
    assert!(
        header.contains(" offers ") && header.ends_with("problem"),
        "{stdout}"
    );
    let upload = stdout
        .lines()
        .find(|l| l.starts_with("server (upload)"))
        .unwrap();
    assert!(upload.contains(" REST "), "{stdout}");
    assert!(!upload.contains("HASH"), "{stdout}");

    // sftp://: writes at any offset; the extension list is not known through libssh2.
    let config = env.write_config("s.toml", "sftp", &[]);
    let row = upload_row(&env, &config);
    assert_eq!(row["offers"]["rest"], true, "{row}");
    assert_eq!(row["offers"]["hash"], serde_json::json!([]), "{row}");
    assert_eq!(
        row["offers"]["sftp_extensions"],
        serde_json::Value::Null,
        "{row}"
    );
    // ... and tells its free space (statvfs@openssh.com), where FTP cannot.
    assert!(row["free_bytes"].as_u64().is_some_and(|f| f > 0), "{row}");
}

#[test]
fn peers_check_reports_that_proftpd_with_mod_digest_offers_hash_md5() {
    let mut env = TestEnv::new(1);
    let port = env.start_proftpd();
    let config = env.write_proftpd_config("c.toml", port);
    let row = upload_row(&env, &config);
    assert_eq!(row["ok"], true, "{row}");
    let offers = &row["offers"];
    assert_eq!(offers["rest"], true, "{row}");
    let hash: Vec<&str> = offers["hash"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(hash.contains(&"MD5"), "{row}");
    assert_eq!(offers["rang"], true, "{row}");
    assert_eq!(offers["xmd5"], true, "{row}");
}

/// The reply to one command on an FTP control connection: its last line (multi-line
/// replies end with `<code> `).
fn command(ftp: &mut BufReader<TcpStream>, line: &str) -> String {
    ftp.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .unwrap();
    reply(ftp)
}

fn reply(ftp: &mut BufReader<TcpStream>) -> String {
    loop {
        let mut l = String::new();
        assert!(ftp.read_line(&mut l).unwrap() > 0, "the FTP server hung up");
        let l = l.trim_end().to_string();
        if l.len() >= 4 && l.as_bytes()[3] == b' ' && l[..3].bytes().all(|b| b.is_ascii_digit()) {
            return l;
        }
    }
}

#[test]
fn send_through_a_peer_to_proftpd() {
    let mut env = TestEnv::new(1);
    let port = env.start_proftpd();
    let config = env.write_proftpd_config("c.toml", port);
    let file = env.random_file("pro", 3 * PART + 7);
    let out = env.send(&file, &config, &["--part-size", "1MiB", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let lines = json_lines(&out);
    let done = lines.last().unwrap();
    let hosts = done["hosts"].as_object().unwrap();
    assert!(
        hosts.contains_key("p1") && hosts.contains_key("local"),
        "{done}"
    );
    let md5 = md5_file(&file);
    let dest = env.srv.join("pro");
    assert_eq!(md5_file(&dest), md5);
    env.assert_clean();

    // The server's own MD5 of the result, as mod_digest computes it.
    let mut ftp = BufReader::new(TcpStream::connect(("127.0.0.1", port)).unwrap());
    assert!(reply(&mut ftp).starts_with("220"));
    assert!(command(&mut ftp, &format!("USER {SERVER_USER}")).starts_with("331"));
    assert!(command(&mut ftp, &format!("PASS {SERVER_PASSWORD}")).starts_with("230"));
    assert!(command(&mut ftp, "OPTS HASH MD5").starts_with("200"));
    let path = dest.display();
    assert_eq!(
        command(&mut ftp, &format!("HASH {path}")),
        format!("213 MD5 0-{} {md5} {path}", 3 * PART + 7)
    );
    command(&mut ftp, "QUIT");
}
