//! relayup: upload one big file through SSH peers on the LAN, in parallel, and prove
//! with MD5 on the server that it arrived whole. The binary's `main` parses the
//! command line and hands it to [`run`]; everything else lives here, so tests and fuzz
//! targets use the same code.

// The layout follows the data flow (README "How it works"): settings and output at
// the top; `send/` plans the parts and drives every host; `remote/` is SSH and the
// peers (the client's side and the relay); `transport/` uploads to the server;
// `server/` turns the parts into the one file there; `commands/` are the other
// subcommands; `platform/` is what differs between Unix and Windows.
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod events;
pub mod interrupt;
pub mod platform;
pub mod progress;
pub mod remote;
pub mod secret;
pub mod send;
pub mod server;
pub mod size;
pub mod transport;

use std::process::ExitCode;

/// Runs one command line; the error, if any, is for [`error::report`].
pub fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    // Before anything can warn: with `--json`, warnings are events too.
    progress::set_json(cli.json());
    match cli.command {
        cli::Command::Send(args) => send::run(*args),
        cli::Command::Peers {
            command: cli::PeersCommand::Check(args),
        } => commands::check::run(&args),
        cli::Command::Peers {
            command: cli::PeersCommand::Deploy(args),
        } => commands::deploy::run(&args),
        cli::Command::Status { json, offline } => commands::status::status(json, offline),
        cli::Command::Clean { ids, config } => commands::status::clean(&ids, config.as_deref()),
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
        cli::Command::Relay => remote::relay::run().map(|_| ExitCode::SUCCESS),
    }
}
