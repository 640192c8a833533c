//! Docker `config.json` parsing on arbitrary bytes: an error or a configuration, never a
//! panic; errors never quote the file's values (they may be credentials). Credentials are then
//! looked up in the parsed configuration, with the helper PATH set to an empty directory, so a
//! `credsStore`/`credHelpers` entry can never run a program: only parsing and decoding run.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use fastbuild_oci::DockerConfig;
use libfuzzer_sys::fuzz_target;

static EMPTY_PATH: LazyLock<tempfile::TempDir> =
    LazyLock::new(|| tempfile::tempdir().expect("temp dir"));

fuzz_target!(|data: &[u8]| {
    let path = Path::new("/fuzz/config.json");
    let mut config = match DockerConfig::from_json(data, path) {
        Ok(config) => config,
        Err(e) => {
            let chain = format!(
                "{e} / {:?}",
                std::error::Error::source(&e).map(ToString::to_string)
            );
            // A credential-like string value (16+ base64 characters; no word of the messages
            // looks like that) must stay out of the message.
            if let Ok(text) = std::str::from_utf8(data) {
                for quoted in text.split('"').skip(1).step_by(2) {
                    let secret_like = quoted.len() >= 16
                        && quoted
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
                    if secret_like {
                        assert!(!chain.contains(quoted), "error quotes {quoted:?}: {chain}");
                    }
                }
            }
            return;
        }
    };
    let _ = format!("{config:?}");
    config.set_helper_path(Some(EMPTY_PATH.path().as_os_str().to_owned()));
    // The registries named in the input, plus Docker Hub.
    let mut registries = vec!["docker.io".to_owned()];
    if let Ok(text) = std::str::from_utf8(data) {
        registries.extend(
            text.split('"')
                .skip(1)
                .step_by(2)
                .take(8)
                .map(str::to_owned),
        );
    }
    for registry in &registries {
        // No helper can run (empty PATH directory), so nothing ever waits: block_on is enough.
        match futures::executor::block_on(config.credential_for(registry)) {
            Ok(credential) => drop(format!("{credential:?}")),
            Err(e) => drop(e.to_string()),
        }
    }
});
