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

/// Prints the error chain once, on one line, and picks the exit code.
pub fn report(err: &anyhow::Error) -> ExitCode {
    let parts: Vec<String> = err
        .chain()
        .map(|e| e.to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let mut msg = parts.join(": ");
    // One line, whatever a remote command printed.
    msg = msg.replace(['\n', '\r'], " ");
    eprintln!("relayup: error: {msg}");
    let code = err
        .downcast_ref::<Code>()
        .copied()
        .unwrap_or(Code::Transfer);
    ExitCode::from(code.exit_code())
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
        let joined: Vec<String> = e
            .chain()
            .map(|c| c.to_string())
            .filter(|s| !s.is_empty())
            .collect();
        assert_eq!(joined, vec!["x"]);
    }
}
