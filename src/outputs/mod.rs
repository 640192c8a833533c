//! Outputs: everything fastbuild writes after a successful build — values files, the CI digest
//! and metadata files, the Tilt image-ref file, Helm invocations and Tiltfile fragments.
//! Outputs read an [`crate::builder::ImageResult`]; they never talk to a builder.

pub mod helm;
pub mod metadata;
pub mod tilt;
pub mod values;
