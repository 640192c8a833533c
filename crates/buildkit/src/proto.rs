//! Code generated at build time from `proto/` (messages and gRPC client/server stubs).
//!
//! Module paths follow the protobuf packages: `moby::buildkit::v1` (Control),
//! `moby::filesync::v1` (FileSync, Auth), `moby::buildkit::secrets::v1`, `fsutil::types`,
//! `grpc::health::v1`, `pb`.
#![allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    unreachable_pub,
    rustdoc::invalid_html_tags,
    rustdoc::bare_urls
)]

include!(concat!(env!("OUT_DIR"), "/_includes.rs"));
