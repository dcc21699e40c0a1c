//! The `relayup` command: parse, run, report (see the library for everything else).

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = relayup::cli::Cli::parse();
    let json = cli.json();
    match relayup::run(cli) {
        Ok(code) => code,
        Err(err) => relayup::error::report(&err, json),
    }
}
