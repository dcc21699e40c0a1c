//! relayup: upload one big file through SSH peers on the LAN, in parallel, and prove
//! with MD5 on the server that it arrived whole. The binary's `main` parses the
//! command line and hands it to [`run`]; everything else lives here, so tests and fuzz
//! targets use the same code.

pub mod assembly;
pub mod check;
pub mod cli;
pub mod config;
pub mod deploy;
pub mod error;
pub mod events;
pub mod hashes;
pub mod health;
pub mod hosts;
pub mod interrupt;
pub mod journal;
pub mod keys;
pub mod local;
pub mod lock;
pub mod merge;
pub mod names;
pub mod peer;
pub mod plan;
pub mod progress;
pub mod protocol;
pub mod quote;
pub mod relay;
pub mod schedule;
pub mod secret;
pub mod send;
pub mod size;
pub mod ssh;
pub mod status;
pub mod transport;

use std::process::ExitCode;

/// Runs one command line; the error, if any, is for [`error::report`].
pub fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    // Before anything can warn: with `--json`, warnings are events too.
    progress::set_json(cli.json());
    match cli.command {
        cli::Command::Send(args) => send::run(args),
        cli::Command::Peers {
            command:
                cli::PeersCommand::Check {
                    config,
                    json,
                    no_rate,
                    accept_new_host_keys,
                },
        } => check::run(config.as_deref(), json, !no_rate, accept_new_host_keys),
        cli::Command::Peers {
            command:
                cli::PeersCommand::Deploy {
                    config,
                    peers,
                    force,
                    json,
                    accept_new_host_keys,
                },
        } => deploy::run(
            config.as_deref(),
            peers.as_deref(),
            force,
            json,
            accept_new_host_keys,
        ),
        cli::Command::Status { json } => status::status(json),
        cli::Command::Clean { ids, config } => status::clean(&ids, config.as_deref()),
        cli::Command::Completions { shell } => {
            let mut cmd = <cli::Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "relayup", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        cli::Command::Man => {
            let cmd = <cli::Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .map(|_| ExitCode::SUCCESS)
                .map_err(Into::into)
        }
        cli::Command::Relay => relay::run().map(|_| ExitCode::SUCCESS),
    }
}
