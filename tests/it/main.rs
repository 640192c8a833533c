//! integration tests
mod buildkit;
mod cli;
mod common;
mod doctor;
mod oci;
mod testbed;
mod watch;
