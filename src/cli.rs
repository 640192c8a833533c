//! Command-line definitions (clap). Parsing only: no logic lives here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Build, push and digest-pin container images for Tilt + Helm.
///
/// fastbuild talks to BuildKit directly over gRPC (or builds natively, without any daemon),
/// pushes straight to the registry, takes the manifest digest from the build itself and writes
/// the Helm values file that pins it.
#[derive(Debug, Parser)]
#[command(
    name = "fastbuild",
    version,
    propagate_version = true,
    max_term_width = 100
)]
#[command(after_help = "\
Examples:
  fastbuild build                      build and push every service, write values files
  fastbuild push api --digest-out d.txt --metadata-file meta.json
  fastbuild helm api --print           print the helm upgrade command
  fastbuild tilt > Tiltfile.fastbuild  Tiltfile fragment for every service
  fastbuild watch --deploy             rebuild on change, helm upgrade when the digest moves

Exit codes: 0 success, 1 failure, 2 usage or project-file error, 130 interrupted (SIGINT),
143 terminated (SIGTERM).")]
pub struct Cli {
    /// Project file (default: `fastbuild.yaml` in the current directory or a parent).
    #[arg(
        short = 'f',
        long = "file",
        global = true,
        env = "FASTBUILD_FILE",
        value_name = "FILE"
    )]
    pub project_file: Option<PathBuf>,

    /// Progress output: `auto` (live view on a terminal, plain lines otherwise), `plain`,
    /// `json` (one JSON object per line) or `quiet`. Default: `FASTBUILD_PROGRESS`, else
    /// buildx's `BUILDKIT_PROGRESS` (`auto`, `tty`, `plain`, `quiet`, `rawjson` → `json`), else
    /// `auto`.
    #[arg(long, global = true, value_enum, env = "FASTBUILD_PROGRESS")]
    pub progress: Option<ProgressMode>,

    /// Let the project file read (`fs.read=PATH`) or write (`fs.write=PATH`, `fs=PATH` for
    /// both; `PATH` may be `*`) outside its own directory. Repeatable, or comma-separated in
    /// `FASTBUILD_ALLOW`.
    #[arg(
        long,
        global = true,
        env = "FASTBUILD_ALLOW",
        value_name = "fs.read=PATH",
        value_delimiter = ','
    )]
    pub allow: Vec<String>,

    /// More logs (`-v` debug, `-vv` trace), on stderr. `RUST_LOG` works too.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProgressMode {
    /// Live view on a terminal, plain lines otherwise.
    Auto,
    /// Plain lines.
    Plain,
    /// One JSON object per line on stdout.
    Json,
    /// Only results and errors.
    Quiet,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build and push services, print `service  repo@sha256:…`, write their values files.
    #[command(after_help = "\
Examples:
  fastbuild build                        every service in fastbuild.yaml
  fastbuild build api worker             two of them
  fastbuild build --context . --repository app --registry localhost:5000   no project file
  fastbuild build api --no-push          build only, print the digest
  fastbuild build api --output oci:out   native builder: an OCI image layout, no registry")]
    Build(BuildArgs),
    /// CI: build and push, write `--digest-out` and `--metadata-file` only on success.
    #[command(after_help = "\
Examples:
  fastbuild push api --digest-out digest.txt
  fastbuild push api --digest-out ref.txt --digest-format ref --metadata-file meta.json")]
    Push(BuildArgs),
    /// Print or run the `helm upgrade --install` command of a service.
    #[command(after_help = "\
Examples:
  fastbuild helm api --print      shell-quoted, copy-pasteable
  fastbuild helm api --run        run it (skipped when nothing changed since the last success)")]
    Helm(HelmArgs),
    /// Print the Tiltfile fragment wiring fastbuild into Tilt (local_resource + helm_resource).
    #[command(after_help = "\
Examples:
  fastbuild tilt > Tiltfile.fastbuild     then `include('Tiltfile.fastbuild')` in your Tiltfile
  fastbuild tilt api")]
    Tilt(TiltArgs),
    /// Check BuildKit, registries, credentials, helm/kubectl, charts and the values directory.
    #[command(after_help = "\
Examples:
  fastbuild doctor
  fastbuild doctor --json")]
    Doctor(DoctorArgs),
    /// Build, then rebuild services whose inputs change; optionally `helm upgrade` them.
    #[command(after_help = "\
Examples:
  fastbuild watch                 every service
  fastbuild watch api --deploy    rebuild api on change and helm upgrade it
  fastbuild watch --poll          when inotify watches are exhausted")]
    Watch(WatchArgs),
    /// List the digests each service was pinned to, newest first (`.fastbuild/history.jsonl`).
    #[command(after_help = "\
Examples:
  fastbuild history                every service
  fastbuild history api --json     one JSON object per line")]
    History(HistoryArgs),
    /// Pin a service's values file to an earlier digest, after checking the registry still has
    /// it; `--deploy` runs the Helm invocation.
    #[command(after_help = "\
Examples:
  fastbuild rollback api                     the digest before the current one
  fastbuild rollback api --steps 2 --deploy
  fastbuild rollback api --to sha256:4f0c…")]
    Rollback(RollbackArgs),
    /// Pin a service's digest in another environment's values file, copying the image to that
    /// environment's registry first (by digest: the same digest there).
    #[command(after_help = "\
Examples:
  fastbuild promote api --values environments/prod/api.image.yaml
  fastbuild promote api --values prod.yaml --to-registry registry.example.com/prod
  fastbuild promote api --values prod.yaml --digest sha256:… --from-registry ci.example.com")]
    Promote(PromoteArgs),
    /// Delete a repository's older fastbuild-tagged (`fb-…`) images; never one a values file
    /// pins or one another tag names.
    #[command(after_help = "\
Examples:
  fastbuild prune --keep 5 --dry-run    list what would be deleted
  fastbuild prune api --keep 3 --values environments/prod/api.image.yaml")]
    Prune(PruneArgs),
    /// Print shell completions.
    #[command(
        after_help = "Example:\n  fastbuild completions bash > /etc/bash_completion.d/fastbuild"
    )]
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
}

/// Output format of `--digest-out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum DigestFormat {
    /// `sha256:…`
    #[default]
    Digest,
    /// `repo@sha256:…`
    Ref,
}

/// Shape of `--metadata-file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetadataFormat {
    /// `docker buildx bake --metadata-file`: `{service: {containerimage.digest, …}}`.
    Bake,
    /// `docker buildx build --metadata-file`: one flat object (exactly one service).
    Buildx,
}

/// Arguments of `build` and `push`.
#[derive(Debug, Args, Default, Clone)]
#[allow(clippy::struct_excessive_bools)] // independent command-line switches
pub struct BuildArgs {
    /// Services to build (default: all).
    pub services: Vec<String>,

    /// CI: write the digest here (only on success).
    #[arg(long, value_name = "FILE")]
    pub digest_out: Option<PathBuf>,
    /// What `--digest-out` holds.
    #[arg(long, value_enum, default_value_t = DigestFormat::Digest)]
    pub digest_format: DigestFormat,
    /// CI: write build metadata JSON here (only on success): with a project file, `docker
    /// buildx bake`'s shape, keyed by service (`{"api": {"containerimage.digest": …}}`), for
    /// any number of services; without one, `docker buildx build`'s flat shape.
    #[arg(long, value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// Shape of `--metadata-file`: `bake` (keyed by service) or `buildx` (flat, one service).
    /// Default: `bake` with a project file, `buildx` without.
    #[arg(long, value_enum, value_name = "SHAPE")]
    pub metadata_format: Option<MetadataFormat>,
    /// CI: write one `repo@sha256:…` per line here, in service order (only when every service
    /// succeeded), like ko's `--image-refs`.
    #[arg(long, value_name = "FILE")]
    pub image_refs: Option<PathBuf>,
    /// CI: write the service's Helm values file here too (for Helmfile), with the configured
    /// keys, in the same run that pushes (only on success; one service).
    #[arg(long, value_name = "FILE")]
    pub values_out: Option<PathBuf>,
    /// Write `repo:tag` here for Tilt's `outputs_image_ref_to` (the values file still pins the digest).
    #[arg(long, value_name = "FILE")]
    pub image_ref_out: Option<PathBuf>,
    /// Build without pushing; print the digest, write no values file.
    #[arg(long)]
    pub no_push: bool,
    /// Write the image to an OCI image layout instead of a registry: `oci:DIR` (native builder).
    #[arg(long, value_name = "oci:DIR")]
    pub output: Option<String>,
    /// Do not write values files (the default for `push`).
    #[arg(long, conflicts_with = "values")]
    pub no_values: bool,
    /// Write values files (the default for `build`).
    #[arg(long)]
    pub values: bool,
    /// Always solve, even when nothing that goes into the build changed since its last
    /// successful build (which `build` otherwise reuses without a solve).
    #[arg(long, conflicts_with = "skip_unchanged")]
    pub force: bool,
    /// `push`: reuse the last build's digest when nothing that goes into the build changed and
    /// the registry still serves it (what `build` and `watch` do by default).
    #[arg(long)]
    pub skip_unchanged: bool,

    #[command(flatten)]
    pub service: ServiceFlags,
}

/// One-off flags: every project-file field, for use without a file or to override it.
#[derive(Debug, Args, Default, Clone)]
#[command(next_help_heading = "Service settings (override fastbuild.yaml, or replace it)")]
pub struct ServiceFlags {
    /// Builder: `buildkit`, `native`, or the name of a buildx builder (`docker buildx ls`;
    /// BuildKit through it, as `docker buildx build --builder NAME`; also `BUILDX_BUILDER`).
    #[arg(long, value_name = "KIND|NAME")]
    pub builder: Option<String>,
    /// BuildKit address: `docker-unix:///var/run/docker.sock`, `unix:///run/buildkit/buildkitd.sock`,
    /// `tcp://host:1234`, `docker://`.
    #[arg(long, env = "BUILDKIT_HOST", value_name = "ADDR")]
    pub buildkit: Option<String>,
    /// TLS CA for a `tcp://` BuildKit.
    #[arg(long, value_name = "FILE")]
    pub buildkit_tls_ca: Option<PathBuf>,
    /// TLS client certificate for a `tcp://` BuildKit (mTLS).
    #[arg(long, value_name = "FILE", requires = "buildkit_tls_key")]
    pub buildkit_tls_cert: Option<PathBuf>,
    /// TLS client key for a `tcp://` BuildKit (mTLS).
    #[arg(long, value_name = "FILE", requires = "buildkit_tls_cert")]
    pub buildkit_tls_key: Option<PathBuf>,
    /// TLS server name for a `tcp://` BuildKit.
    #[arg(long, value_name = "NAME")]
    pub buildkit_tls_server_name: Option<String>,
    /// Build context directory.
    #[arg(long, value_name = "DIR")]
    pub context: Option<PathBuf>,
    /// Dockerfile (default `<context>/Dockerfile`).
    #[arg(long, value_name = "FILE")]
    pub dockerfile: Option<PathBuf>,
    /// Dockerfile target stage.
    #[arg(long)]
    pub target: Option<String>,
    /// Build argument `KEY=VALUE` (repeatable).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// Image label `KEY=VALUE` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Platform, e.g. `linux/amd64` (repeatable, or comma-separated:
    /// `linux/amd64,linux/arm64`).
    #[arg(long = "platform", value_name = "OS/ARCH")]
    pub platforms: Vec<String>,
    /// Secret `id=NAME,src=FILE` or `id=NAME,env=VAR` (repeatable).
    #[arg(long = "secret", value_name = "SPEC")]
    pub secrets: Vec<String>,
    /// SSH agent forwarding for `RUN --mount=type=ssh`: `default` (SSH_AUTH_SOCK), `ID`, or
    /// `ID=PATH[,PATH]` (an agent socket or key files; repeatable).
    #[arg(long = "ssh", value_name = "default|ID[=PATH]")]
    pub ssh: Vec<String>,
    /// Named context for `COPY --from=NAME` / `FROM NAME`: `NAME=DIR` (synced with its own
    /// `.dockerignore`) or `NAME=docker-image://REF` (repeatable).
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    pub build_contexts: Vec<String>,
    /// SBOM attestation: `true`, `false`, or scanner attributes (`generator=IMAGE`). Off by
    /// default: attestations change the index digest on every build.
    #[arg(long, value_name = "true|false|ATTRS", num_args = 0..=1, default_missing_value = "true")]
    pub sbom: Option<String>,
    /// Provenance attestation: `true` (`mode=min`), `false`, `mode=min` or `mode=max`. Off by
    /// default: attestations change the index digest on every build.
    #[arg(long, value_name = "true|false|mode=min|max", num_args = 0..=1, default_missing_value = "true")]
    pub provenance: Option<String>,
    /// Do not use the build cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Cache import, e.g. `type=registry,ref=localhost:5000/app:cache` (repeatable).
    #[arg(long = "cache-from", value_name = "SPEC")]
    pub cache_from: Vec<String>,
    /// Cache export, e.g. `type=inline` (repeatable).
    #[arg(long = "cache-to", value_name = "SPEC")]
    pub cache_to: Vec<String>,
    /// Registry the host pushes to, `host[:port][/prefix]`.
    #[arg(long, env = "FASTBUILD_REGISTRY", value_name = "HOST")]
    pub registry: Option<String>,
    /// Registry as the cluster pulls from it (default: `--registry`).
    #[arg(long, value_name = "HOST")]
    pub pull_registry: Option<String>,
    /// Allow plain HTTP to this registry (loopback is always allowed; repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
    /// Extra CA bundle (PEM) for registries with private certificates (repeatable).
    #[arg(long = "registry-ca", value_name = "FILE")]
    pub registry_ca: Vec<PathBuf>,
    /// Docker config directory or file with registry credentials (default: `$DOCKER_CONFIG`
    /// or `~/.docker`).
    #[arg(long, value_name = "PATH")]
    pub docker_config: Option<PathBuf>,
    /// Repository under the registry (default: the service name).
    #[arg(long)]
    pub repository: Option<String>,
    /// Tag to push (default: content-derived `fb-<digest prefix>`; `$EXPECTED_REF` inside Tilt).
    /// Repeatable: every tag points at the one digest; the first is the one printed.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Reproducible images across checkouts (file times in layers clamped to SOURCE_DATE_EPOCH):
    /// `true` (the default for `push`) or `false` (the default for `build` and `watch`).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub reproducible: Option<bool>,
    /// Layer compression: `auto`, `gzip`, `zstd`, `uncompressed`.
    #[arg(long, value_name = "ALGO")]
    pub compression: Option<String>,
    /// Directory for generated values files.
    #[arg(long, value_name = "DIR")]
    pub values_dir: Option<PathBuf>,
    /// Values file of this service.
    #[arg(long, value_name = "FILE")]
    pub values_file: Option<PathBuf>,
    /// Values key for `<registry>/<repository>` (default `image.graph`; empty to omit).
    #[arg(long, value_name = "KEY")]
    pub repository_key: Option<String>,
    /// Values key for the digest (default `image.digest`; empty to omit).
    #[arg(long, value_name = "KEY")]
    pub digest_key: Option<String>,
    /// Values key for the registry host alone (`docker.io`); the repository key then holds
    /// the path under it (`ameide/gw`), as Bitnami charts and Tilt's `helm_resource` expect.
    #[arg(long, value_name = "KEY")]
    pub registry_key: Option<String>,
    /// Values key for the tag (tag-only charts).
    #[arg(long, value_name = "KEY")]
    pub tag_key: Option<String>,
    /// Native builder: base image reference or `scratch`.
    #[arg(long, value_name = "REF")]
    pub base: Option<String>,
    /// Native builder: a layer entry `SRC:DEST` (repeatable; each flag is one layer).
    #[arg(long = "layer", value_name = "SRC:DEST")]
    pub layers: Vec<String>,
    /// Native builder: entrypoint (repeat for each argument).
    #[arg(long = "entrypoint", value_name = "ARG")]
    pub entrypoint: Vec<String>,
    /// Native builder: cmd (repeat for each argument).
    #[arg(long = "cmd", value_name = "ARG")]
    pub cmd: Vec<String>,
    /// Native builder: environment `KEY=VALUE` (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Native builder: working directory.
    #[arg(long)]
    pub workdir: Option<String>,
    /// Native builder: user.
    #[arg(long)]
    pub user: Option<String>,
    /// Native builder: exposed port (repeatable).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<String>,
    /// How many services build at once.
    #[arg(long, value_name = "N")]
    pub parallel: Option<usize>,
    /// Helm release (default: the service name).
    #[arg(long)]
    pub release: Option<String>,
    /// Helm chart.
    #[arg(long)]
    pub chart: Option<String>,
    /// Helm namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Helm values file before the generated one (repeatable, in order).
    #[arg(long = "helm-values", value_name = "FILE")]
    pub helm_values: Vec<PathBuf>,
    /// Extra `helm upgrade` flag (repeatable).
    #[arg(long = "helm-flag", value_name = "FLAG", allow_hyphen_values = true)]
    pub helm_flags: Vec<String>,
    /// Helm `--timeout` (default 10m).
    #[arg(long)]
    pub timeout: Option<String>,
    /// Do not roll a failed upgrade back (no `--atomic` / `--rollback-on-failure`): keeps the
    /// failing state to debug in a dev loop. Per service: `helm: {rollback_on_failure: false}`.
    #[arg(long)]
    pub no_rollback_on_failure: bool,
}

/// The helm binary a command runs (`--helm`, `HELM`).
#[derive(Debug, Args, Clone)]
pub struct HelmBinary {
    /// Helm binary.
    #[arg(
        long = "helm",
        env = "HELM",
        default_value = "helm",
        value_name = "HELM"
    )]
    pub program: String,
}

/// Arguments of `helm`.
#[derive(Debug, Args, Clone)]
pub struct HelmArgs {
    /// The service.
    pub service: String,
    /// Print the command, shell-quoted (the default).
    #[arg(long, conflicts_with = "run")]
    pub print: bool,
    /// Run the command; skipped when the digest and every values file are unchanged since the
    /// last successful run.
    #[arg(long)]
    pub run: bool,
    /// With `--run`: run even if nothing changed.
    #[arg(long, requires = "run")]
    pub force: bool,
    #[command(flatten)]
    pub helm: HelmBinary,
    #[command(flatten)]
    pub service_flags: ServiceFlags,
}

/// Arguments of `tilt`.
#[derive(Debug, Args, Clone)]
pub struct TiltArgs {
    /// Services (default: all).
    pub services: Vec<String>,
    /// The command Tilt runs for fastbuild.
    #[arg(long, default_value = "fastbuild")]
    pub fastbuild_command: String,
    /// The helm command the fragment asks for its version when Tilt loads it, to pick
    /// `--atomic` (Helm 3) or `--rollback-on-failure` (Helm 4) on each developer's machine.
    #[arg(long, env = "HELM", default_value = "helm")]
    pub helm: String,
    /// Also emit `update_settings(k8s_upsert_timeout_secs=600, …)`, which changes the whole
    /// Tilt session (by default it is only suggested in a comment).
    #[arg(long)]
    pub session_settings: bool,
}

/// Arguments of `history`.
#[derive(Debug, Args, Clone)]
pub struct HistoryArgs {
    /// Services (default: all).
    pub services: Vec<String>,
    /// One JSON object per line (with the repository, full digest, git state and values file).
    #[arg(long)]
    pub json: bool,
    /// At most this many records per service (newest).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

/// Arguments of `rollback`.
#[derive(Debug, Args, Clone)]
pub struct RollbackArgs {
    /// The service.
    pub service: String,
    /// The digest to pin (`sha256:…`).
    #[arg(long, value_name = "DIGEST", conflicts_with = "steps")]
    pub to: Option<String>,
    /// How many distinct digests back in the service's history (default 1).
    #[arg(long, value_name = "N")]
    pub steps: Option<usize>,
    /// Run the service's `helm upgrade` afterwards.
    #[arg(long)]
    pub deploy: bool,
    #[command(flatten)]
    pub helm: HelmBinary,
    #[command(flatten)]
    pub service_flags: ServiceFlags,
}

/// Arguments of `doctor`.
#[derive(Debug, Args, Clone)]
pub struct DoctorArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub helm: HelmBinary,
    /// kubectl binary.
    #[arg(long, env = "KUBECTL", default_value = "kubectl")]
    pub kubectl: String,
    /// Do not push the probe image (`<registry>/fastbuild-doctor-probe:probe`, a few bytes)
    /// through BuildKit to local and insecure registries.
    #[arg(long)]
    pub no_push_probe: bool,
    #[command(flatten)]
    pub service_flags: ServiceFlags,
}

/// Arguments of `watch`.
#[derive(Debug, Args, Clone)]
pub struct WatchArgs {
    /// Services (default: all).
    pub services: Vec<String>,
    /// `helm upgrade` a service after its digest changes.
    #[arg(long)]
    pub deploy: bool,
    /// Quiet window in milliseconds: a build starts once no relevant change arrived for this
    /// long (an editor's save is a burst of events within a few ms; a change during a build
    /// cancels it and starts again, so a short window costs at most a cancelled build).
    #[arg(long, default_value_t = 20, value_name = "MS")]
    pub debounce: u64,
    /// Poll the file system instead of inotify (network file systems, exhausted watch limits).
    #[arg(long)]
    pub poll: bool,
    /// Always solve, even when a change leaves every input of the build as it was at its last
    /// successful build (whose digest is otherwise reused).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub helm: HelmBinary,
    #[command(flatten)]
    pub service_flags: ServiceFlags,
}

/// Arguments of `promote`.
#[derive(Debug, Args, Clone)]
pub struct PromoteArgs {
    /// The service.
    pub service: String,
    /// The values file to write: the other environment's own file for this image (e.g. listed
    /// in a Helmfile environment), rewritten whole with the service's values keys.
    #[arg(long = "values", value_name = "FILE")]
    pub values: PathBuf,
    /// Registry the image is in, `host[:port][/prefix]` (default: the service's registry).
    #[arg(long, value_name = "HOST")]
    pub from_registry: Option<String>,
    /// Registry of the other environment, `host[:port][/prefix]`: the image is copied there by
    /// digest first (only what it lacks), and the values file names it.
    #[arg(long, value_name = "HOST")]
    pub to_registry: Option<String>,
    /// The digest to promote (default: the one the service's values file pins).
    #[arg(long, value_name = "sha256:…")]
    pub digest: Option<String>,
    #[command(flatten)]
    pub service_flags: ServiceFlags,
}

/// Arguments of `prune`.
#[derive(Debug, Args, Clone)]
pub struct PruneArgs {
    /// Services whose repositories to prune (default: all).
    pub services: Vec<String>,
    /// How many of each repository's newest fastbuild images to keep; pinned ones are kept
    /// besides.
    #[arg(long, value_name = "N")]
    pub keep: usize,
    /// List what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Another values file whose digests must stay (another environment's; repeatable). The
    /// project's values files, and the services' Helm values files, always count.
    #[arg(long = "values", value_name = "FILE")]
    pub values: Vec<PathBuf>,
    #[command(flatten)]
    pub service_flags: ServiceFlags,
}
