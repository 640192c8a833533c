//! integration tests
mod buildkit;
mod buildkit_features;
mod buildkit_oci;
mod buildkit_scale;
mod cli;
mod common;
mod conformance;
mod doctor;
mod native_cli;
mod oci;
mod promote;
mod testbed;
mod watch;
