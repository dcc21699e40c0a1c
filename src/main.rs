//! The `relayup` command: parse, run, report (see the library for everything else).

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    match relayup::run(relayup::cli::Cli::parse()) {
        Ok(code) => code,
        Err(err) => relayup::error::report(&err),
    }
}
