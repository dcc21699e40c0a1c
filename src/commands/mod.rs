//! The subcommands besides `send`: `peers check`, `peers deploy`, `status` and
//! `clean`.

pub mod check;
pub mod deploy;
pub mod status;
