//! Exit codes, attached to errors in one place and read back in `main`.

use std::process::ExitCode;

/// The category of a failure, which decides the exit code. Attached as anyhow context;
/// it prints as nothing, so messages stay as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Code {
    /// Bad command line or config (2).
    Usage,
    /// Connection, authentication or host key (3).
    Connect,
    /// A transfer that could not complete (4).
    Transfer,
    /// The server's MD5 does not match the source's (5).
    Verify,
    /// Another run of the same send holds its lock (6).
    Busy,
    /// Interrupted by a signal: 128 + its number (130 for Ctrl-C, 143 for SIGTERM).
    Interrupted,
}

impl Code {
    pub fn exit_code(self) -> u8 {
        match self {
            Code::Usage => 2,
            Code::Connect => 3,
            Code::Transfer => 4,
            Code::Verify => 5,
            Code::Busy => 6,
            Code::Interrupted => crate::interrupt::exit_code(),
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Ok(())
    }
}

/// Adds `code` unless the error already carries one (the innermost decision wins).
pub fn with_code(err: anyhow::Error, code: Code) -> anyhow::Error {
    if err.downcast_ref::<Code>().is_some() {
        err
    } else {
        err.context(code)
    }
}

/// The error chain on one line, whatever a remote command printed.
pub fn message(err: &anyhow::Error) -> String {
    let parts: Vec<String> = err
        .chain()
        .map(|e| e.to_string())
        .filter(|s| !s.is_empty())
        .collect();
    parts.join(": ").replace(['\n', '\r'], " ")
}

/// The exit code of an error, decided here and only here: by the [`Code`] attached
/// where it was seen (a lock held by another run is marked 6 where it is met), else by
/// its kind where the kind alone says it (a host key problem or an unreachable host:
/// 3), else 4.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    kind(err).unwrap_or(Code::Transfer).exit_code()
}

/// What an error is, for its exit code.
fn kind(err: &anyhow::Error) -> Option<Code> {
    if let Some(code) = err.downcast_ref::<Code>() {
        return Some(*code);
    }
    if err
        .downcast_ref::<crate::remote::ssh::HostKeyProblem>()
        .is_some()
        || err
            .downcast_ref::<crate::remote::ssh::Unreachable>()
            .is_some()
    {
        return Some(Code::Connect);
    }
    None
}

/// Prints the error once, on one line, on stderr; with `json` (the command's `--json`)
/// an `error` event with the same message and the exit code ends stdout's stream.
pub fn report(err: &anyhow::Error, json: bool) -> ExitCode {
    let msg = message(err);
    let code = exit_code(err);
    eprintln!("relayup: error: {msg}");
    if json {
        crate::progress::emit_error(&msg, code);
    }
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::{anyhow, Context};

    #[test]
    fn code_found_through_context_and_kept() {
        let e: anyhow::Error = Err::<(), _>(anyhow!("inner"))
            .context(Code::Verify)
            .context("outer")
            .unwrap_err();
        assert_eq!(e.downcast_ref::<Code>(), Some(&Code::Verify));
        let e = with_code(e, Code::Transfer);
        assert_eq!(
            e.downcast_ref::<Code>(),
            Some(&Code::Verify),
            "innermost wins"
        );
        let e = with_code(anyhow!("x"), Code::Connect);
        assert_eq!(e.downcast_ref::<Code>(), Some(&Code::Connect));
        assert_eq!(message(&e), "x");
        assert_eq!(exit_code(&e), 3);
    }

    #[test]
    fn the_code_attached_where_it_was_seen_decides() {
        let busy = anyhow!("another send").context(Code::Busy);
        // Wrapped as a connection problem by the pre-flight, it still exits 6.
        let busy = with_code(busy.context("merge login"), Code::Connect);
        assert_eq!(exit_code(&busy), 6);
        assert_eq!(exit_code(&with_code(anyhow!("x"), Code::Verify)), 5);
        assert_eq!(exit_code(&anyhow!("no code")), 4);
    }

    #[test]
    fn message_is_one_line_without_the_codes() {
        let e = Err::<(), _>(anyhow!("remote said:\nno\r\nspace"))
            .context(Code::Transfer)
            .context("staging part 3 on p1")
            .unwrap_err();
        assert_eq!(message(&e), "staging part 3 on p1: remote said: no  space");
        assert_eq!(exit_code(&e), 4);
        assert_eq!(
            exit_code(&anyhow!("no code")),
            4,
            "a failure is a transfer failure by default"
        );
    }
}
