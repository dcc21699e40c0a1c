//! Exit 0 means the file under that name is exactly the source: two runs of one send,
//! destinations that are not regular files, temp dirs planted by someone else, a
//! server too full for the merge, a part gone at the merge, a login shell that is not
//! POSIX.

use crate::harness::{
    json_lines, md5_file, send_args, text, uid_of, TestEnv, CSH_USER, PART, PEER_USERS,
    SERVER_PASSWORD, SERVER_USER,
};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The upload id `send` would use, from `--dry-run`.
fn upload_id(env: &TestEnv, file: &Path, config: &Path, extra: &[&str]) -> String {
    let mut args = vec!["--dry-run"];
    args.extend_from_slice(extra);
    let out = env.send(file, config, &args);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("upload id: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("an upload id in {stdout}"))
        .to_string()
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn a_second_run_of_the_same_send_is_refused_and_the_first_publishes_the_source() {
    let env = TestEnv::new(3);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 24 * PART);
    let args = send_args(&file, &config, &["--bwlimit", "1MiB"]);
    let first = env.spawn_send(&args);
    first.wait_parts(2, None);
    let pid = first.child.id();

    // The same machine and journal: the local lock answers at once.
    let out = env.send(&file, &config, &["--part-size", "1MiB", "--no-progress"]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!(
            "another send of this file is running on {}",
            hostname()
        )) && err.contains(&format!("pid {pid}")),
        "{err}"
    );

    // Another journal (another account or machine): the server's lock answers.
    let second = env.spawn_send_with_state(&args, &env.root.join("state-2"));
    let (status, _events, err) = second.finish(Duration::from_secs(60));
    assert_eq!(status.code(), Some(6), "{err}");
    assert!(
        err.contains("lock on the server") && err.contains(&format!("pid {pid}")),
        "{err}"
    );

    let (status, _events, err) = first.finish(Duration::from_secs(120));
    assert!(status.success(), "{err}");
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
    env.assert_clean();

    // Once the first has finished, the same command runs: nothing to send, or with
    // --overwrite a whole new verified send.
    let out = env.send(&file, &config, &["--no-progress"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stderr_of(&out).contains("already on the server"));
    let out = env.send(&file, &config, &["--overwrite", "--no-progress"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
    env.assert_clean();
}

/// A process of the server account holding the flock of a temp dir, as a run's
/// lingering merge login would: its owner line is written by the test.
struct LockHolder(Child);

impl LockHolder {
    fn start(temp: &Path) -> LockHolder {
        let mut child = Command::new("runuser")
            .args(["-u", SERVER_USER, "--", "setsid", "sh", "-c"])
            .arg("cd \"$1\" && exec 9>>lock && flock 9 && echo locked && exec sleep 600")
            .arg("sh")
            .arg(temp)
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        LockHolder(child)
    }

    /// The process group of the `sleep` that holds the lock (setsid made it a leader).
    fn group(&self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut family = crate::harness::descendants(self.0.id());
            family.push(self.0.id());
            let sleep = family.into_iter().find(|p| {
                fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
            });
            if let Some(p) = sleep {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "the holder's sleep did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        for p in crate::harness::descendants(self.0.id()) {
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_lock_of_a_dead_run_here_is_taken_over_and_a_live_one_elsewhere_is_respected() {
    let env = TestEnv::new(1);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 3 * PART);
    let id = upload_id(&env, &file, &config, &[]);
    let temp = env.srv.join(format!(".relayup-{id}"));
    sh(&format!(
        "runuser -u {SERVER_USER} -- mkdir -m 700 {}",
        temp.display()
    ));
    let mut holder = LockHolder::start(&temp);
    let group = holder.group();

    // Held by a run on another machine: respected, and named.
    fs::write(
        temp.join("owner"),
        format!("build-9.example 4242 1795000000 {group}\n"),
    )
    .unwrap();
    let out = env.send(&file, &config, &["--no-progress"]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("running on build-9.example since 2026-") && err.contains("pid 4242"),
        "{err}"
    );
    assert!(holder.alive(), "a live lock elsewhere is never broken");
    assert!(!env.srv.join("f").exists());

    // Held by a run of this machine whose process is gone (its connection lingers on
    // the server): taken over, and the send goes through.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    fs::write(
        temp.join("owner"),
        format!("{} {dead} 1795000000 {group}\n", hostname()),
    )
    .unwrap();
    let out = env.send(&file, &config, &["--no-progress"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
    let deadline = Instant::now() + Duration::from_secs(10);
    while holder.alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!holder.alive(), "the dead run's lock holder was ended");
    env.assert_clean();
}

#[test]
fn clean_refuses_to_remove_the_data_of_a_running_send() {
    let env = TestEnv::new(1);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 12 * PART);
    let args = send_args(&file, &config, &["--bwlimit", "1MiB"]);
    let run = env.spawn_send(&args);
    run.wait_parts(1, None);
    let clean = |state: &Path| {
        Command::new(env!("CARGO_BIN_EXE_relayup"))
            .arg("clean")
            .env_remove("RELAYUP_CONFIG")
            .env("XDG_STATE_HOME", state)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // This machine's lock.
    let out = clean(&env.root.join("state"));
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    assert!(
        stderr_of(&out).contains("another send of this file is running")
            && stderr_of(&out).contains("not cleaned"),
        "{}",
        text(&out)
    );
    // The server's lock: the same journal entry seen from another state directory.
    let other = env.root.join("state-2");
    fs::create_dir_all(other.join("relayup")).unwrap();
    for e in fs::read_dir(env.root.join("state/relayup")).unwrap() {
        let e = e.unwrap();
        if e.path().extension().is_some_and(|x| x == "json") {
            fs::copy(e.path(), other.join("relayup").join(e.file_name())).unwrap();
        }
    }
    let out = clean(&other);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    assert!(
        stderr_of(&out).contains("lock on the server"),
        "{}",
        text(&out)
    );
    let (status, _events, err) = run.finish(Duration::from_secs(120));
    assert!(status.success(), "{err}");
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
    env.assert_clean();
}

#[test]
fn overwrite_onto_a_directory_or_a_symlink_is_refused_and_nothing_moves() {
    let env = TestEnv::new(1);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 3 * PART);
    let latest = env.srv.join("latest");
    fs::create_dir(&latest).unwrap();
    sh(&format!("chown {SERVER_USER} {}", latest.display()));
    let victim = env.root.join("pub/victim");
    fs::write(&victim, "keep").unwrap();
    std::os::unix::fs::symlink(&victim, env.srv.join("link")).unwrap();
    std::os::unix::fs::symlink(&latest, env.srv.join("dirlink")).unwrap();

    for (dest, what) in [
        ("latest", "is a directory"),
        ("link", "is a symbolic link"),
        ("dirlink", "is a symbolic link"),
    ] {
        for extra in [&["--overwrite"][..], &[][..]] {
            let mut args = vec!["--dest", dest, "--no-progress"];
            args.extend_from_slice(extra);
            let out = env.send(&file, &config, &args);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{dest} {extra:?}: {}",
                text(&out)
            );
            let err = stderr_of(&out);
            assert!(
                err.contains(&format!("{}/{dest}", env.srv.display())) && err.contains(what),
                "{err}"
            );
            assert_eq!(
                err.lines().filter(|l| l.contains("error")).count(),
                1,
                "one error line: {err}"
            );
        }
    }
    assert!(latest.is_dir() && fs::read_dir(&latest).unwrap().next().is_none());
    assert_eq!(fs::read_link(env.srv.join("link")).unwrap(), victim);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
    env.assert_clean();
}

#[test]
fn a_temp_dir_that_is_not_ours_is_never_written_into() {
    let env = TestEnv::new(1);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 3 * PART);
    let id = upload_id(&env, &file, &config, &[]);
    let temp = env.srv.join(format!(".relayup-{id}"));

    // A symlink planted in the upload directory, to a place the account can write.
    let elsewhere = env.root.join("pub/elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    sh(&format!("chown {SERVER_USER} {}", elsewhere.display()));
    std::os::unix::fs::symlink(&elsewhere, &temp).unwrap();
    let out = env.send(&file, &config, &["--no-progress"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        stderr_of(&out).contains(&format!(
            ".relayup-{id} is not a directory of {SERVER_USER}"
        )),
        "{}",
        text(&out)
    );
    assert!(fs::read_dir(&elsewhere).unwrap().next().is_none());
    fs::remove_file(&temp).unwrap();

    // A directory of another account, open to everyone.
    fs::create_dir(&temp).unwrap();
    sh(&format!("chown {} {}", PEER_USERS[0], temp.display()));
    fs::set_permissions(&temp, fs::Permissions::from_mode(0o777)).unwrap();
    let out = env.send(&file, &config, &["--no-progress"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(fs::read_dir(&temp).unwrap().next().is_none());
    // Ours, but open to others: not used either.
    sh(&format!("chown {SERVER_USER} {}", temp.display()));
    let out = env.send(&file, &config, &["--no-progress"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(!env.srv.join("f").exists());

    fs::remove_dir(&temp).unwrap();
    let out = env.send(&file, &config, &["--no-progress"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
    env.assert_clean();
}

#[test]
fn a_staging_dir_that_is_not_the_peers_own_is_left_alone() {
    let env = TestEnv::new(1);
    let stage = env.staging(0);
    fs::create_dir(&stage).unwrap();
    sh(&format!("chown {} {}", PEER_USERS[0], stage.display()));
    fs::set_permissions(&stage, fs::Permissions::from_mode(0o777)).unwrap();
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 3 * PART);
    let out = env.send(&file, &config, &["--part-size", "1MiB", "--no-progress"]);
    assert!(out.status.success(), "{}", text(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("p1 left out") && err.contains("others cannot write"),
        "{err}"
    );
    assert_eq!(
        fs::metadata(&stage).unwrap().permissions().mode() & 0o777,
        0o777,
        "never chmod-ed"
    );
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
}

/// A tmpfs of `size` mounted at `dir` for the server account, unmounted on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755,uid={}", uid_of(SERVER_USER)),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .unwrap();
        assert!(ok.success(), "mounting a tmpfs at {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_server_without_room_for_the_merge_fails_in_pre_flight() {
    let env = TestEnv::new(1);
    let small = env.srv.join("small");
    let _mount = Tmpfs::mount(&small, "4m");
    let config = env.write_config("c.toml", "ftp", &[]);
    let srv = env.srv.display().to_string();
    crate::harness::edit_file(&config, |t| {
        t.replace(&format!("{srv}\""), &format!("{srv}/small\""))
    });

    // 3 MiB of parts plus the 3 MiB merged file cannot fit in 4 MiB.
    let file = env.random_file("f", 3 * PART);
    let started = Instant::now();
    let out = env.send(&file, &config, &["--no-progress"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!("{srv}/small has")) && err.contains("free, this send needs 6.0 MiB"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "fails in pre-flight"
    );
    assert!(!small.join("f").exists());

    // 1 MiB fits (1 + 1 MiB).
    let file = env.random_file("g", PART);
    let out = env.send(&file, &config, &["--no-progress"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(md5_file(&small.join("g")), md5_file(&file));
}

#[test]
fn a_part_missing_at_the_merge_is_sent_again() {
    let env = TestEnv::new(1);
    let config = env.write_config("c.toml", "ftp", &[]);
    let (run, file, part) = env.send_until_part_2_is_on_the_server(&config);
    fs::remove_file(part).unwrap();
    let (status, _events, err) = run.finish(Duration::from_secs(120));
    assert!(status.success(), "{err}");
    assert!(err.contains("missing or corrupt on the server"), "{err}");
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
    env.assert_clean();
}

#[test]
fn a_tcsh_login_shell_works_on_the_server_and_on_a_peer() {
    let mut env = TestEnv::new(0);
    let port = env.add_sshd("csh", CSH_USER, true);
    let srv = env.root.join("srv-csh");
    fs::create_dir(&srv).unwrap();
    sh(&format!("chown {CSH_USER} {}", srv.display()));
    let p = &env.private;
    let config = p.join("csh.toml");
    fs::write(
        &config,
        format!(
            "[server]\nurl = \"ftp://127.0.0.1:{ftp}{srv}\"\nuser = \"{CSH_USER}\"\npassword_env = \"RELAYUP_TEST_PW\"\n\n\
             [merge]\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"{CSH_USER}\"\ndir = \"{srv}\"\n\n\
             [ssh]\nidentity = \"{key}\"\nknown_hosts = \"{kh}\"\n\n\
             [[peer]]\nname = \"c1\"\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"{CSH_USER}\"\n\
             relayup = \"{bin}\"\nstaging = \"{stage}\"\n",
            ftp = env.ftp_port,
            srv = srv.display(),
            key = p.join("id_ed25519").display(),
            kh = p.join("known_hosts").display(),
            bin = env.root.join("pub/relayup").display(),
            stage = env.root.join("stage/csh").display(),
        ),
    )
    .unwrap();
    let file = env.random_file("f", 5 * PART + 3);
    let out = Command::new(env!("CARGO_BIN_EXE_relayup"))
        .arg("send")
        .arg(&file)
        .arg("--config")
        .arg(&config)
        .args(["--part-size", "1MiB", "--bwlimit", "2MiB", "--json"])
        .env_remove("RELAYUP_CONFIG")
        .env("RELAYUP_TEST_PW", SERVER_PASSWORD)
        .env("XDG_STATE_HOME", env.root.join("state"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let events = json_lines(&out);
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "part_done" && e["host"] == "c1"),
        "the tcsh peer carried parts: {}",
        text(&out)
    );
    assert_eq!(md5_file(&srv.join("f")), md5_file(&file));
}
