//! relayup: upload one big file through SSH peers on the LAN, in parallel, and prove
//! with MD5 on the server that it arrived whole.

mod check;
mod cli;
mod config;
mod deploy;
mod error;
mod hashes;
mod health;
mod interrupt;
mod journal;
mod keys;
mod lock;
mod merge;
mod peer;
mod plan;
mod progress;
mod protocol;
mod quote;
mod relay;
mod schedule;
mod secret;
mod send;
mod size;
mod ssh;
mod status;
mod transport;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Send(args) => send::run(args),
        cli::Command::Peers {
            command:
                cli::PeersCommand::Check {
                    config,
                    json,
                    no_rate,
                    accept_new_host_keys,
                },
        } => {
            ssh::set_accept_new(accept_new_host_keys);
            check::run(config.as_deref(), json, !no_rate)
        }
        cli::Command::Peers {
            command:
                cli::PeersCommand::Deploy {
                    config,
                    peers,
                    force,
                    json,
                    accept_new_host_keys,
                },
        } => {
            ssh::set_accept_new(accept_new_host_keys);
            deploy::run(config.as_deref(), peers.as_deref(), force, json)
        }
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
    };
    match result {
        Ok(code) => code,
        Err(err) => error::report(&err),
    }
}
