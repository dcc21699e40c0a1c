//! The subcommands besides `send`: `peers check`, `peers deploy`, `status` and
//! `clean`.

pub mod check;
mod cleanup;
pub mod deploy;
mod probe;
pub mod server_state;
pub mod status;
