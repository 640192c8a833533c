//! Registry credentials (Docker `config.json`, credential helpers) and `WWW-Authenticate`
//! challenges. Secrets never appear in `Debug` output, logs or errors.
//!
//! A credential helper name (`credsStore`, `credHelpers`) must be a plain name
//! (`^[A-Za-z0-9._-]+$`); `docker-credential-<name>` is run only from an absolute PATH
//! directory — the Docker config may come from the project (`docker_config`), and a name or
//! PATH entry that resolves against the working directory would run a project file.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::error::{Error, Result};

/// The key Docker uses for Docker Hub in `config.json`.
pub const DOCKER_HUB_CONFIG_KEY: &str = "https://index.docker.io/v1/";

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// Username and password (or token used as password).
    Basic {
        /// User name.
        username: String,
        /// Password (redacted in `Debug`).
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the token endpoint.
    IdentityToken(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Self::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

/// A parsed Docker client configuration (only the credential parts).
#[derive(Default)]
pub struct DockerConfig {
    path: Option<PathBuf>,
    file: ConfigFile,
    helper_path: Option<std::ffi::OsString>,
}

impl fmt::Debug for DockerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerConfig")
            .field("path", &self.path)
            .field("auths", &self.file.auths.keys().collect::<Vec<_>>())
            .field("creds_store", &self.file.creds_store)
            .field("cred_helpers", &self.file.cred_helpers)
            .field("helper_path", &self.helper_path)
            .finish()
    }
}

/// Strips scheme and path from a config key: `https://host:5000/v1/` → `host:5000`.
fn normalize_key(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

/// Whether `registry` is one of Docker Hub's names: `docker.io` (what users write),
/// `index.docker.io` (its config key) or `registry-1.docker.io` (where its API is served).
pub fn is_docker_hub(registry: &str) -> bool {
    matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    )
}

impl DockerConfig {
    /// The default location: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        // An empty `DOCKER_CONFIG` is unset, as for the docker CLI.
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
    }

    /// Loads `path` (a `config.json` file or a directory holding one), or the default
    /// location when `None`. A missing file gives an empty configuration.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let Some(mut path) = path.map(Path::to_owned).or_else(Self::default_path) else {
            return Ok(Self::default());
        };
        if path.is_dir() {
            path = path.join("config.json");
        }
        let bytes = match fs_err::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self {
                    path: Some(path),
                    ..Self::default()
                });
            }
            Err(e) => {
                return Err(Error::DockerConfig {
                    path,
                    source: Box::new(e),
                });
            }
        };
        Self::from_json(&bytes, &path)
    }

    /// Parses the content of a `config.json`; `path` is where it came from (for messages and
    /// [`Self::credential_for`] errors). Pure: reads no file and runs no credential helper.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self> {
        // serde_json's messages quote the offending value, which here may be a credential
        // (`"auths":{"host":"<base64>"}`): say what and where, never the value.
        let file: ConfigFile = serde_json::from_slice(bytes).map_err(|e| {
            let what = match e.classify() {
                serde_json::error::Category::Io => "cannot be read",
                serde_json::error::Category::Syntax => "is not valid JSON",
                serde_json::error::Category::Eof => "ends too early",
                serde_json::error::Category::Data => {
                    "has a value of the wrong type (e.g. an `auths` entry that is not an object)"
                }
            };
            Error::DockerConfig {
                path: path.to_owned(),
                source: format!("it {what} at line {} column {}", e.line(), e.column()).into(),
            }
        })?;
        Ok(Self {
            path: Some(path.to_owned()),
            file,
            helper_path: None,
        })
    }

    /// Sets the `PATH` searched for credential helpers (`None` = inherit).
    pub fn set_helper_path(&mut self, path: Option<std::ffi::OsString>) {
        self.helper_path = path;
    }

    /// Credentials for `registry` (`host[:port]`, `docker.io` for Docker Hub): the registry's
    /// `credHelpers` entry, else `credsStore`, else `auths`.
    pub async fn credential_for(&self, registry: &str) -> Result<Option<Credential>> {
        let hub = is_docker_hub(registry);
        let server = if hub {
            DOCKER_HUB_CONFIG_KEY.to_owned()
        } else {
            registry.to_owned()
        };
        // Like Docker: the registry's `credHelpers` entry, else `credsStore`; empty = none.
        let helper = self
            .file
            .cred_helpers
            .iter()
            .find(|(k, _)| {
                let k = normalize_key(k);
                k == registry || (hub && is_docker_hub(k))
            })
            .map(|(k, v)| (format!("credHelpers[{k:?}]"), v))
            .or_else(|| {
                self.file
                    .creds_store
                    .as_ref()
                    .map(|v| ("credsStore".to_owned(), v))
            })
            .filter(|(_, v)| !v.is_empty());
        if let Some((key, helper)) = helper {
            let config = self.path.clone().unwrap_or_default();
            if let Err(reason) = check_helper_name(helper) {
                return Err(Error::InvalidCredentialHelper {
                    path: config,
                    key,
                    name: helper.escape_debug().to_string(),
                    reason: reason.to_owned(),
                });
            }
            let origin = HelperOrigin { config, key };
            if let Some(cred) =
                run_helper(helper, &server, self.helper_path.as_deref(), &origin).await?
            {
                return Ok(Some(cred));
            }
        }
        let entry = self.file.auths.iter().find(|(k, _)| {
            let k = normalize_key(k);
            k == registry || (hub && is_docker_hub(k))
        });
        let Some((key, entry)) = entry else {
            return Ok(None);
        };
        if let Some(token) = &entry.identity_token
            && !token.is_empty()
        {
            return Ok(Some(Credential::IdentityToken(token.clone())));
        }
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let bad = |reason: &str| Error::DockerConfig {
                path: self.path.clone().unwrap_or_default(),
                source: format!("`auths.{key}.auth` {reason}").into(),
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| bad("is not valid base64"))?;
            let decoded = String::from_utf8(decoded).map_err(|_| bad("is not UTF-8"))?;
            let (username, password) = decoded
                .split_once(':')
                .ok_or_else(|| bad("is not base64 of `user:password`"))?;
            return Ok(Some(Credential::Basic {
                username: username.to_owned(),
                password: password.to_owned(),
            }));
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(Some(Credential::Basic {
                username: u.clone(),
                password: p.clone(),
            }));
        }
        Ok(None)
    }
}

#[derive(Deserialize)]
struct HelperOutput {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Why `name` cannot name a credential helper (`docker-credential-<name>`), if it cannot: it
/// must be a plain file name — `^[A-Za-z0-9._-]+$`, not `.` or `..` — so it can only ever be
/// looked up on PATH, never be a path (`x/../pwn.sh` would run `./pwn.sh`).
fn check_helper_name(name: &str) -> std::result::Result<(), &'static str> {
    if name == "." || name == ".." {
        return Err("`.` and `..` are not helper names");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(
            "a helper name may only hold ASCII letters, digits, `.`, `_` and `-` \
             (a `/` would make it a path)",
        );
    }
    Ok(())
}

/// Where a helper name came from, for messages.
struct HelperOrigin {
    /// The Docker config file.
    config: PathBuf,
    /// `credsStore` or `credHelpers["host"]`.
    key: String,
}

fn is_executable_file(path: &Path) -> bool {
    let Ok(meta) = fs_err::metadata(path) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

/// Finds `program` in the directories of `path` (`None` = this process's `PATH`), like Go's
/// `exec.LookPath` since Go 1.19: a match through an empty or relative entry (`.`, `bin`) is an
/// error, not a program to run — it would be a file of the working directory.
fn find_on_path(
    program: &str,
    path: Option<&std::ffi::OsStr>,
) -> std::result::Result<PathBuf, String> {
    let path = path
        .map(std::ffi::OsStr::to_owned)
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if !is_executable_file(&candidate) {
            continue;
        }
        if !dir.is_absolute() {
            let entry = if dir.as_os_str().is_empty() {
                "an empty PATH entry (the working directory)".to_owned()
            } else {
                format!("the relative PATH entry `{}`", dir.display())
            };
            return Err(format!(
                "it was found only through {entry}, which is not used because it resolves \
                 against the working directory; put the helper in an absolute PATH directory \
                 (and remove relative entries from PATH)"
            ));
        }
        return Ok(candidate);
    }
    Err("it is not an executable file in any (absolute) PATH directory".to_owned())
}

/// Runs `docker-credential-<helper> get` with `server` on stdin; `helper` has passed
/// [`check_helper_name`], and the program is looked up on PATH only ([`find_on_path`]).
async fn run_helper(
    helper: &str,
    server: &str,
    path: Option<&std::ffi::OsStr>,
    origin: &HelperOrigin,
) -> Result<Option<Credential>> {
    use tokio::io::AsyncWriteExt as _;
    let program = format!("docker-credential-{helper}");
    let fail = |reason: String| Error::CredentialHelper {
        helper: helper.to_owned(),
        registry: server.to_owned(),
        reason,
    };
    let resolved = find_on_path(&program, path).map_err(|why| {
        fail(format!(
            "{why}; install `{program}` on PATH, or change `{}` in `{}`",
            origin.key,
            origin.config.display()
        ))
    })?;
    let mut command = tokio::process::Command::new(&resolved);
    if let Some(path) = path {
        command.env("PATH", path);
    }
    let mut child = command
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("could not run `{}` ({e})", resolved.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server.as_bytes())
            .await
            .map_err(|e| fail(format!("could not write to it: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| fail(format!("could not wait for it: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // Helpers print "credentials not found in native keychain" for unknown servers.
        if stdout.contains("credentials not found")
            || String::from_utf8_lossy(&out.stderr).contains("credentials not found")
        {
            return Ok(None);
        }
        return Err(fail(format!("it exited with {}", out.status)));
    }
    let parsed: HelperOutput = serde_json::from_str(stdout.trim())
        .map_err(|_| fail("its output is not the expected JSON".to_owned()))?;
    if parsed.secret.is_empty() {
        return Ok(None);
    }
    if parsed.username == "<token>" {
        return Ok(Some(Credential::IdentityToken(parsed.secret)));
    }
    Ok(Some(Credential::Basic {
        username: parsed.username,
        password: parsed.secret,
    }))
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// `bearer` or `basic` (lowercased).
    pub scheme: String,
    /// Parameters (`realm`, `service`, `scope`, …), keys lowercased.
    pub params: HashMap<String, String>,
}

impl Challenge {
    /// Parses the first challenge of a `WWW-Authenticate` header value.
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let (scheme, rest) = match header.find(char::is_whitespace) {
            Some(i) => (&header[..i], header[i..].trim_start()),
            None => (header, ""),
        };
        if scheme.is_empty() {
            return None;
        }
        let mut params = HashMap::new();
        let mut chars = rest.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
                chars.next();
            }
            let mut key = String::new();
            while let Some(&c) = chars.peek() {
                if c == '=' || c == ',' {
                    break;
                }
                key.push(c);
                chars.next();
            }
            if key.is_empty() {
                break;
            }
            if chars.next() != Some('=') {
                break;
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
            params.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
        Some(Self {
            scheme: scheme.to_ascii_lowercase(),
            params,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_with_quoted_commas_is_parsed() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:samalba/my-app:pull,push");
        let c = Challenge::parse(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "Registry Realm");
        let c = Challenge::parse(r#"Bearer realm=http://x/t, error="invalid_token", a="q\"x""#)
            .unwrap();
        assert_eq!(c.params["realm"], "http://x/t");
        assert_eq!(c.params["error"], "invalid_token");
        assert_eq!(c.params["a"], "q\"x");
        assert!(Challenge::parse("  ").is_none());
    }

    fn write_config(dir: &Path, json: &str) -> PathBuf {
        let p = dir.join("config.json");
        fs_err::write(&p, json).unwrap();
        p
    }

    #[tokio::test]
    async fn docker_config_auths_are_found_by_host_and_hub_key() {
        let dir = tempfile::tempdir().unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:x");
        let p = write_config(
            dir.path(),
            &format!(
                r#"{{"auths":{{
                  "https://reg.example.com:5000/v1/":{{"auth":"{auth}"}},
                  "https://index.docker.io/v1/":{{"username":"bob","password":"pw"}},
                  "tok.example":{{"identitytoken":"refresh"}}}}}}"#
            ),
        );
        let cfg = DockerConfig::load(Some(dir.path())).unwrap();
        let c = cfg
            .credential_for("reg.example.com:5000")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            c,
            Credential::Basic {
                username: "alice".into(),
                password: "s3cret:x".into()
            }
        );
        let dbg = format!("{c:?} {cfg:?}");
        assert!(!dbg.contains("s3cret") && !dbg.contains(&auth), "{dbg}");
        let hub = cfg.credential_for("docker.io").await.unwrap().unwrap();
        assert!(matches!(hub, Credential::Basic { ref username, .. } if username == "bob"));
        assert_eq!(
            cfg.credential_for("tok.example").await.unwrap(),
            Some(Credential::IdentityToken("refresh".into()))
        );
        assert_eq!(cfg.credential_for("other.example").await.unwrap(), None);
        let cfg = DockerConfig::load(Some(&p)).unwrap();
        assert!(
            cfg.credential_for("reg.example.com:5000")
                .await
                .unwrap()
                .is_some()
        );
    }

    #[tokio::test]
    async fn missing_or_broken_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DockerConfig::load(Some(&dir.path().join("nope.json"))).unwrap();
        assert_eq!(cfg.credential_for("x.io").await.unwrap(), None);
        let p = write_config(dir.path(), "{not json");
        let err = DockerConfig::load(Some(&p)).unwrap_err().to_string();
        assert!(err.contains(&p.display().to_string()), "{err}");
        // A value of the wrong type: serde_json would quote it, and it may be a credential.
        for text in [
            r#"{"auths":{"x.io":"dXNlcjpzM2NyZXQ="}}"#,
            r#"{"auths":{"x.io":{"password":1234567}}}"#,
        ] {
            write_config(dir.path(), text);
            let err = DockerConfig::load(Some(dir.path())).unwrap_err();
            let chain = format!("{err} / {}", std::error::Error::source(&err).unwrap());
            assert!(
                chain.contains("wrong type")
                    && chain.contains("line 1")
                    && !chain.contains("dXNlcjpzM2NyZXQ")
                    && !chain.contains("1234567"),
                "{chain}"
            );
        }
        write_config(dir.path(), r#"{"auths":{"x.io":{"auth":"!!"}}}"#);
        let cfg = DockerConfig::load(Some(dir.path())).unwrap();
        let err = cfg.credential_for("x.io").await.unwrap_err();
        let chain = format!("{err} / {}", std::error::Error::source(&err).unwrap());
        assert!(
            chain.contains("not valid base64") && !chain.contains("!!"),
            "{chain}"
        );
    }

    #[tokio::test]
    async fn from_json_parses_bytes_without_a_file() {
        let p = Path::new("/nowhere/config.json");
        let cfg =
            DockerConfig::from_json(br#"{"auths":{"x.io":{"username":"u","password":"p"}}}"#, p)
                .unwrap();
        assert!(cfg.credential_for("x.io").await.unwrap().is_some());
        let err = DockerConfig::from_json(b"{\"auths\":\xff}", p).unwrap_err();
        let chain = format!("{err} / {}", std::error::Error::source(&err).unwrap());
        assert!(
            chain.contains("/nowhere/config.json") && chain.contains("not valid JSON"),
            "{chain}"
        );
    }

    #[tokio::test]
    async fn missing_credential_helper_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        write_config(
            dir.path(),
            r#"{"credHelpers":{"x.io":"fastbuild-no-such-helper"}}"#,
        );
        let cfg = DockerConfig::load(Some(dir.path())).unwrap();
        let err = cfg.credential_for("x.io").await.unwrap_err().to_string();
        assert!(
            err.contains("docker-credential-fastbuild-no-such-helper") && err.contains("PATH"),
            "{err}"
        );
    }
}
