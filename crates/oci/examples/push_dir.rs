//! Pushes a directory as a one-layer scratch image and reports timing and transfer counters;
//! used to measure compression choices and memory use.
//!
//! `cargo run --release -p fastbuild-oci --example push_dir -- DIR REGISTRY/REPO:TAG [none|gzip|zstd1|zstd3] [CHUNK_MIB]`
#![allow(clippy::print_stdout)]

use std::time::Instant;

use fastbuild_oci::{
    Compression, ImageSpec, LayerSpec, RegistryClient, RegistryOptions, Target, build_and_push,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, reference, rest @ ..] = args.as_slice() else {
        return Err(
            "usage: push_dir DIR REGISTRY/REPO:TAG [none|gzip|zstd1|zstd3] [CHUNK_MIB]".into(),
        );
    };
    let compression = match rest.first().map(String::as_str) {
        None | Some("none") => Compression::None,
        Some("gzip") => Compression::Gzip,
        Some("zstd1") => Compression::Zstd { level: 1 },
        Some("zstd3") => Compression::Zstd { level: 3 },
        Some(other) => return Err(format!("unknown compression {other}").into()),
    };
    let mut options = RegistryOptions::default();
    if let Some(mib) = rest.get(1) {
        options.chunk_size = mib.parse::<u64>()? * 1024 * 1024;
    }
    let client = RegistryClient::new(options)?;
    let spec = ImageSpec {
        layers: vec![LayerSpec::new([(dir.as_str(), "/data")])],
        compression: Some(compression),
        ..ImageSpec::default()
    };
    let start = Instant::now();
    let pushed = build_and_push(&spec, &Target::Registry(reference.parse()?), &client).await?;
    println!(
        "{} {:?} in {:.3}s: {:?}",
        pushed.reference,
        compression,
        start.elapsed().as_secs_f64(),
        pushed.stats
    );
    Ok(())
}
