//! integration tests
mod buildkit;
mod buildkit_features;
mod buildkit_oci;
mod buildkit_scale;
mod cli;
mod common;
mod conformance;
mod connhelper;
mod doctor;
mod history;
mod native_cli;
mod oci;
mod promote;
mod reuse;
mod terminal;
mod testbed;
mod watch;
