//! The errors the binary maps to exit codes, in one room: a usage error (exit 2), an
//! interruption (130 for Ctrl-C, 143 for SIGTERM), and the codes themselves.

/// A usage error (exit code 2): bad flags, bad project file, unknown service.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The run was interrupted (Ctrl-C or SIGTERM): exit code 130 or 143.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// Exit codes, as documented in `--help`.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// A build, push, deploy or check failed.
    pub const FAILURE: i32 = 1;
    /// Bad flags, bad project file, unknown service.
    pub const USAGE: i32 = 2;
    /// Interrupted by Ctrl-C (SIGINT): 128 + 2.
    pub const INTERRUPTED: i32 = 130;
    /// Terminated by SIGTERM (what CI runners, Tilt and `kill` send): 128 + 15.
    pub const TERMINATED: i32 = 143;
}
