//! Docker credential helpers (`credsStore`, `credHelpers`) run only as `docker-credential-<name>`
//! found in an absolute PATH directory: a name that is a path, or a PATH entry that is relative,
//! never runs a file of the project. A repository can point fastbuild at its own Docker config
//! (`docker_config` in fastbuild.yaml), so this is a project file never being executed.
//!
//! The first test changes the working directory (to be the project's, as for `fastbuild build`);
//! it is the only test here that depends on it.

use std::path::{Path, PathBuf};

use fastbuild_oci::{Credential, DockerConfig, Error, error_chain};

fn executable(path: &Path, script: &str) {
    fs_err::write(path, script).unwrap();
    fs_err::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

fn config(dir: &Path, json: &str) -> PathBuf {
    fs_err::create_dir_all(dir).unwrap();
    let p = dir.join("config.json");
    fs_err::write(&p, json).unwrap();
    p
}

#[tokio::test]
async fn helper_names_and_relative_path_entries_never_run_a_project_file() {
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().canonicalize().unwrap().join("project");
    let marker = project.join("PWNED");
    fs_err::create_dir_all(project.join("docker-credential-x")).unwrap();
    fs_err::create_dir_all(project.join("bin")).unwrap();
    // Shell builtins only: the helper may run with a PATH that has no `touch`.
    let pwn = format!("#!/bin/sh\necho pwned > '{}'\nexit 1\n", marker.display());
    executable(&project.join("pwn.sh"), &pwn);
    executable(&project.join("bin/docker-credential-rel"), &pwn);
    executable(&project.join("docker-credential-rel"), &pwn);
    let previous_cwd = std::env::current_dir().unwrap();
    std::env::set_current_dir(&project).unwrap();

    // `docker-credential-x/../pwn.sh` resolves to `./pwn.sh` from the working directory.
    let plain = "may only hold ASCII letters, digits, `.`, `_` and `-`";
    for (json, key, why) in [
        (r#"{"credsStore":"x/../pwn.sh"}"#, "credsStore", plain),
        (
            r#"{"credHelpers":{"registry.example":"x/../pwn.sh"}}"#,
            r#"credHelpers["registry.example"]"#,
            plain,
        ),
        (
            r#"{"credsStore":".."}"#,
            "credsStore",
            "`.` and `..` are not helper names",
        ),
    ] {
        let path = config(&project.join("cfg"), json);
        let cfg = DockerConfig::load(Some(&path)).unwrap();
        let err = cfg.credential_for("registry.example").await.unwrap_err();
        let msg = error_chain(&err);
        assert!(!marker.exists(), "{json}: a project file was run");
        assert!(
            matches!(err, Error::InvalidCredentialHelper { .. }),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("Docker config `{}`", path.display()))
                && msg.contains(&format!("`{key}` names the credential helper"))
                && msg.contains(why)
                && msg.contains(&format!("fix or remove `{key}`"))
                && msg.contains("from a PATH directory"),
            "{msg}"
        );
    }

    // A plain name, but PATH has a relative (`bin`) or empty entry: not run from there.
    let path = config(&project.join("cfg"), r#"{"credsStore":"rel"}"#);
    for (search, entry) in [
        ("bin:/nonexistent", "the relative PATH entry `bin`"),
        (":/nonexistent", "an empty PATH entry"),
    ] {
        let mut cfg = DockerConfig::load(Some(&path)).unwrap();
        cfg.set_helper_path(Some(search.into()));
        let err = cfg.credential_for("registry.example").await.unwrap_err();
        let msg = error_chain(&err);
        assert!(!marker.exists(), "PATH={search}: a project file was run");
        assert!(matches!(err, Error::CredentialHelper { .. }), "{msg}");
        assert!(
            msg.contains("docker-credential-rel")
                && msg.contains(entry)
                && msg.contains("absolute PATH directory")
                && msg.contains("`credsStore`")
                && msg.contains(&path.display().to_string()),
            "{msg}"
        );
    }
    std::env::set_current_dir(previous_cwd).unwrap();
}

#[tokio::test]
async fn a_valid_helper_on_path_still_works() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    fs_err::create_dir_all(&bin).unwrap();
    for name in ["fbtest", "fb.test_helper-2"] {
        executable(
            &bin.join(format!("docker-credential-{name}")),
            "#!/bin/sh\nread server\n[ \"$1\" = get ] && [ \"$server\" = registry.example ] || \
             { echo 'credentials not found in native keychain'; exit 1; }\n\
             printf '{\"ServerURL\":\"%s\",\"Username\":\"alice\",\"Secret\":\"s3cret\"}' \"$server\"\n",
        );
    }
    let helper_path = format!(
        "/nonexistent:{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for json in [
        r#"{"credHelpers":{"registry.example":"fbtest"}}"#,
        r#"{"credsStore":"fb.test_helper-2"}"#,
    ] {
        let path = config(&tmp.path().join("cfg"), json);
        let mut cfg = DockerConfig::load(Some(&path)).unwrap();
        cfg.set_helper_path(Some(helper_path.clone().into()));
        assert_eq!(
            cfg.credential_for("registry.example").await.unwrap(),
            Some(Credential::Basic {
                username: "alice".into(),
                password: "s3cret".into()
            }),
            "{json}"
        );
        // Not found by the helper: no credentials, not an error.
        assert_eq!(cfg.credential_for("other.example").await.unwrap(), None);
    }
    // An empty `credsStore` means none, as for Docker.
    let path = config(&tmp.path().join("cfg"), r#"{"credsStore":""}"#);
    let cfg = DockerConfig::load(Some(&path)).unwrap();
    assert_eq!(cfg.credential_for("registry.example").await.unwrap(), None);
}
