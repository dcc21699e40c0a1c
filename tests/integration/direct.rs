//! Direct writes: no `[merge]` login, every host writes its parts into one file on the
//! server over its own FTP/FTPS/SFTP login; each part verified, then renamed.

use crate::harness::{edit_file, json_lines, md5_file, text, TestEnv, PART};
use std::path::{Path, PathBuf};

/// A config for `scheme` without the `[merge]` section: the server gives uploads only.
pub fn direct_config(env: &TestEnv, name: &str, scheme: &str) -> PathBuf {
    let path = env.write_config(name, scheme, &[]);
    edit_file(&path, |t| {
        let start = t.find("[merge]").expect("write_config writes [merge]");
        let end = start + t[start..].find("\n\n").expect("a blank line ends [merge]") + 2;
        format!("{}{}", &t[..start], &t[end..])
    });
    path
}

/// Sends `file` as `dest`, checks the server's copy by MD5, that nothing is left, and
/// returns the `done` event.
fn send_ok(
    env: &TestEnv,
    config: &Path,
    file: &Path,
    dest: &str,
    extra: &[&str],
) -> serde_json::Value {
    let mut args = vec!["--dest", dest, "--json"];
    args.extend_from_slice(extra);
    let out = env.send(file, config, &args);
    assert!(
        out.status.success(),
        "send of {dest} failed:\n{}",
        text(&out)
    );
    assert_eq!(
        md5_file(&env.srv.join(dest)),
        md5_file(file),
        "{dest}: the server's copy differs from the source"
    );
    env.assert_clean();
    json_lines(&out)
        .into_iter()
        .find(|e| e["type"] == "done")
        .expect("a done event")
}

#[test]
fn direct_writes_over_ftp_with_read_back() {
    let mut env = TestEnv::new(3);
    env.set_vsftpd_option("lock_upload_files=NO");
    let config = direct_config(&env, "direct.toml", "ftp");
    for size in [0, 1, 3, PART - 1, PART, PART + 1, 3 * PART + 7] {
        let file = env.random_file(&format!("f{size}"), size);
        for strategy in ["adaptive", "equal"] {
            let dest = format!("ftp-{strategy}-{size}.bin");
            let mut extra = vec!["--strategy", strategy];
            if strategy == "adaptive" {
                extra.extend(["--part-size", "1MiB"]);
            }
            let done = send_ok(&env, &config, &file, &dest, &extra);
            assert_eq!(done["verification"], "read-back", "{done}");
        }
    }
}
