//! The command line (clap derive). Raw values only: `send.rs` resolves them.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "relayup",
    version,
    about = "Upload one big file fast through SSH peers on the LAN, each using its own upload bandwidth, verified by MD5 on the server",
    after_help = "Examples:\n  relayup send release.iso\n  relayup send build.tar --dest build-2026-11-22.tar --json\n  relayup send big.img --dry-run\n  relayup peers check"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Whether the command was asked for JSON lines on stdout (`--json`): its warnings
    /// and its final error are then events too.
    pub fn json(&self) -> bool {
        match &self.command {
            Command::Send(args) => args.json,
            Command::Status { json, .. } => *json,
            Command::Peers {
                command: PeersCommand::Check(CheckArgs { json, .. }),
            }
            | Command::Peers {
                command: PeersCommand::Deploy(DeployArgs { json, .. }),
            } => *json,
            Command::Clean { .. } | Command::Completions { .. } | Command::Man | Command::Relay => {
                false
            }
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Upload FILE to the server through the configured peers.
    Send(Box<SendArgs>),
    /// Inspect the configured peers.
    Peers {
        #[command(subcommand)]
        command: PeersCommand,
    },
    /// List unfinished sends (interrupted or failed) that a re-run would resume.
    Status {
        /// One JSON object per line on stdout.
        #[arg(long)]
        json: bool,
        /// Only the journal on this machine: do not ask the servers what they hold.
        #[arg(long)]
        offline: bool,
    },
    /// Remove the temporary data of unfinished sends on the server and the peers.
    Clean {
        /// Upload ids from `relayup status` [default: every unfinished send].
        ids: Vec<String>,
        /// Use this config instead of the one each send was started with.
        #[arg(long, value_name = "PATH")]
        config: Option<std::path::PathBuf>,
    },
    /// Print a shell completion script (e.g. `relayup completions bash > /etc/bash_completion.d/relayup`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `relayup man > ~/.local/share/man/man1/relayup.1`.
    Man,
    /// The peer side, started over SSH by `send` (JSON lines on stdin/stdout).
    #[command(hide = true)]
    Relay,
}

#[derive(Subcommand, Debug)]
pub enum PeersCommand {
    /// Check every peer (reachable, host key, login, relayup version, server login, staging
    /// space, upload rate) and the merge login.
    Check(CheckArgs),
    /// Install this relayup binary on peers that lack it or run another version.
    ///
    /// Copies it over SFTP to ~/.local/bin/relayup on each peer whose OS and
    /// architecture (`uname -sm`) match this machine's, checks it runs there, and says
    /// what to install on the others. Peers that already run this version are left alone.
    #[command(
        after_help = "Examples:\n  relayup peers deploy\n  relayup peers deploy --peers alice-pc,bob-pc --force"
    )]
    Deploy(DeployArgs),
}

/// `relayup peers check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// One JSON object per line on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Skip the upload-rate probe (a few seconds of upload from every host, removed afterwards).
    #[arg(long)]
    pub no_rate: bool,
    /// Trust unknown SSH host keys on first use and add them to known_hosts.
    #[arg(long)]
    pub accept_new_host_keys: bool,
}

/// `relayup peers deploy`.
#[derive(Args, Debug)]
pub struct DeployArgs {
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Only these peers (comma-separated names from the config).
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// Copy the binary even to peers that already run this version.
    #[arg(long)]
    pub force: bool,
    /// One JSON object per line on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Trust unknown SSH host keys on first use and add them to known_hosts.
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// Copy this build of relayup instead of this very binary (one built for the
    /// peers' platform: another architecture, or Windows).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrategyArg {
    /// Many parts in a shared queue: fast hosts carry more.
    Adaptive,
    /// Exactly one part per host (the classic split).
    Equal,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestHash {
    Auto,
    Md5,
    Sha256,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyArg {
    /// The server's hash of each part where it has one, else read-back.
    Auto,
    /// The server hashes each part (FTP XMD5); an error if it cannot.
    Server,
    /// Each part is read back from the server and compared with the source.
    ReadBack,
    /// Not verified (sizes only); the result says so.
    None,
}

#[derive(Args, Debug, Clone)]
pub struct SendArgs {
    /// Files or directories to upload; a directory is sent with everything in it,
    /// under its own name (as `scp -r` places it).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// The one file being sent (set per file of a release).
    #[arg(skip)]
    pub file: PathBuf,
    /// Its path on the server, components validated (set for a release's manifest).
    #[arg(skip)]
    pub dest_path: Option<String>,
    /// A release's files and their paths on the server, sent in one run.
    #[arg(skip)]
    pub items: Vec<(PathBuf, String)>,
    /// With several files: publish none of them until every one is verified, then
    /// all in one pass (default: each file as soon as the transfer is verified, so
    /// one bad file does not hold back the others).
    #[arg(long)]
    pub atomic_release: bool,
    /// After the files, upload a checksum list in `md5sum -c` format under this path
    /// (e.g. MD5SUMS), relative to server.url's directory.
    #[arg(long, value_name = "PATH")]
    pub manifest: Option<std::ffi::OsString>,
    /// The manifest's checksums: md5 (`md5sum -c`) or sha256 (`sha256sum -c`),
    /// computed in the same pass over the files. auto = sha256 when the manifest's
    /// name says so (SHA256SUMS), else md5.
    #[arg(long, value_enum, default_value_t = ManifestHash::Auto)]
    pub manifest_hash: ManifestHash,
    /// The one pass over the files computes their SHA-256 too (for the manifest).
    #[arg(skip)]
    pub sha256: bool,
    /// Config file [default: $RELAYUP_CONFIG, then ~/.config/relayup/peers.toml].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Name of the file on the server, inside server.url's directory [default: FILE's name].
    #[arg(long, value_name = "NAME")]
    pub dest: Option<std::ffi::OsString>,
    /// How parts are cut and handed out.
    #[arg(long, value_enum, default_value_t = StrategyArg::Adaptive)]
    pub strategy: StrategyArg,
    /// Part size for `adaptive`, e.g. 32MiB [default: from file size and host count, 8-64 MiB].
    #[arg(long, value_name = "SIZE")]
    pub part_size: Option<String>,
    /// Drop a host whose transfer moves no byte for this many seconds; its part goes to another host.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub stall_timeout: u64,
    /// When every host fails against the server (a server outage), keep retrying for this many seconds before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=86400))]
    pub retry_for: u64,
    /// Cap each host's upload to the server (this machine and every peer), per second: 5MiB, 2MB (bytes: KiB, MiB, GiB, KB, MB, GB) or 40Mbit (bits, decimal: Kbit, Mbit, Gbit; 1 Mbit = 125000 bytes). A bare number is refused.
    #[arg(long, value_name = "RATE")]
    pub bwlimit: Option<String>,
    /// Cap all hosts' uploads together, in the units of --bwlimit (e.g. 100Mbit): split equally among the hosts uploading at the time, split again when one starts or stops. With --bwlimit too, each host gets the smaller of the two.
    #[arg(long, value_name = "RATE")]
    pub bwlimit_total: Option<String>,
    /// Trust unknown SSH host keys on first use and add them to known_hosts (a changed key is never accepted).
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// Use only these peers (comma-separated names from the config).
    #[arg(
        long,
        value_name = "NAMES",
        value_delimiter = ',',
        conflicts_with = "no_peers"
    )]
    pub peers: Option<Vec<String>>,
    /// Upload directly from this machine, without peers.
    #[arg(long)]
    pub no_peers: bool,
    /// Replace the destination if it already exists.
    #[arg(long)]
    pub overwrite: bool,
    /// With direct writes: how each part written on the server is checked. auto = the
    /// server's hash (FTP XMD5) where it has one, else read-back. The append-merge
    /// always hashes the whole file on the server.
    #[arg(long, value_enum, default_value_t = VerifyArg::Auto)]
    pub verify: VerifyArg,
    /// JSON lines on stdout: start, progress, part_done, merged, warning, done (or error at the end of a failed send); with --dry-run, one plan.
    #[arg(long)]
    pub json: bool,
    /// No progress display; print only the result.
    #[arg(long)]
    pub no_progress: bool,
    /// Print the plan and exit without sending anything.
    #[arg(long)]
    pub dry_run: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        // clap checks conflicts, defaults, value names and ids only when asked.
        Cli::command().debug_assert();
    }

    #[test]
    fn json_is_read_from_every_command_that_has_it() {
        let json = |args: &[&str]| Cli::try_parse_from(args).unwrap().json();
        assert!(json(&["relayup", "send", "f", "--json"]));
        assert!(!json(&["relayup", "send", "f"]));
        assert!(json(&["relayup", "status", "--json"]));
        assert!(json(&["relayup", "peers", "check", "--json"]));
        assert!(json(&["relayup", "peers", "deploy", "--json"]));
        assert!(!json(&["relayup", "peers", "deploy"]));
        assert!(!json(&["relayup", "clean"]));
        assert!(!json(&["relayup", "relay"]));
    }
}
