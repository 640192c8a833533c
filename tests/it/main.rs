//! integration tests
mod buildkit;
mod cli;
mod common;
mod oci;
mod testbed;
mod watch;
