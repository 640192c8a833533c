//! fastbuild: build, push and digest-pin container images for Tilt + Helm.
//!
//! The binary is a thin shell over this library. Data flows one way:
//! [`settings`] (flags + `fastbuild.yaml`) → [`builder`] (BuildKit over gRPC, or the native
//! builder) → publish (the builder pushes; the digest is known locally) → [`outputs`] (values
//! files, CI metadata, Helm invocations, Tiltfile fragments). [`watch`] drives the same pipeline
//! on file changes; [`printer`] is the only module that writes to the terminal.

pub mod allow;
pub mod atomic;
pub mod builder;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod outputs;
pub mod pipeline;
pub mod printer;
pub mod settings;
pub mod watch;

use anyhow::Result;
use clap::{CommandFactory as _, Parser as _};
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command};
use crate::printer::Printer;
use crate::settings::Project;

/// The run was interrupted (Ctrl-C): exit code 130.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// Exit codes, as documented in `--help`.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// A build, push, deploy or check failed.
    pub const FAILURE: i32 = 1;
    /// Bad flags, bad project file, unknown service.
    pub const USAGE: i32 = 2;
    /// Interrupted by Ctrl-C.
    pub const INTERRUPTED: i32 = 130;
}

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "fastbuild=debug,fastbuild_buildkit=debug,fastbuild_oci=debug,info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()))
        .try_init();
}

/// Runs the CLI with the process arguments; returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let printer = Printer::new(cli.progress);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            printer.error(&anyhow::Error::new(e).context("cannot start the async runtime"));
            return exit::FAILURE;
        }
    };
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let result = runtime.block_on(async move {
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                c.cancel();
            }
        });
        run(cli, &printer, &cancel).await.map_err(|e| (e, printer))
    });
    // Every output is written by now (atomically, before `run` returned): do not wait for idle
    // connections and tasks to wind down (measured ~50 ms on a loaded machine).
    runtime.shutdown_background();
    match result {
        Ok(()) => exit::OK,
        Err((e, printer)) => {
            if e.downcast_ref::<Interrupted>().is_some() {
                printer.warn("interrupted; nothing partial was written");
                return exit::INTERRUPTED;
            }
            printer.error(&e);
            if e.chain()
                .any(|c| c.downcast_ref::<settings::UsageError>().is_some())
            {
                exit::USAGE
            } else {
                exit::FAILURE
            }
        }
    }
}

/// Runs one parsed command.
pub async fn run(cli: Cli, printer: &Printer, cancel: &CancellationToken) -> Result<()> {
    match cli.command {
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "fastbuild", &mut buf);
            printer.raw(&String::from_utf8_lossy(&buf));
            Ok(())
        }
        Command::Build(args) => {
            let project = Project::load(cli.project_file.as_deref(), &cli.allow)?;
            pipeline::run(&project, &args, pipeline::Flavor::Build, printer, cancel).await
        }
        Command::Push(args) => {
            let project = Project::load(cli.project_file.as_deref(), &cli.allow)?;
            pipeline::run(&project, &args, pipeline::Flavor::Push, printer, cancel).await
        }
        Command::Helm(args) => {
            let project = Project::load(cli.project_file.as_deref(), &cli.allow)?;
            let plan = project.plan(
                &project.select(std::slice::from_ref(&args.service), &args.service_flags)?[0],
                &args.service_flags,
            )?;
            if args.run {
                match outputs::helm::run(&plan, &args.helm, args.force).await? {
                    outputs::helm::RunOutcome::Deployed => printer.note(Some(&plan.name), "helm upgrade succeeded"),
                    outputs::helm::RunOutcome::Skipped => printer.note(
                        Some(&plan.name),
                        "skipped helm upgrade: digest, values files and chart unchanged since the last successful run (--force to run anyway)",
                    ),
                }
            } else {
                let cwd = std::env::current_dir()?;
                let helm_argv = outputs::helm::argv_relative(&plan, &cwd, &args.helm)?;
                printer.raw(&format!(
                    "{}\n",
                    outputs::helm::shell_line(&args.helm, &helm_argv)
                ));
            }
            Ok(())
        }
        Command::Tilt(args) => {
            let project = Project::load(cli.project_file.as_deref(), &cli.allow)?;
            let flags = cli::ServiceFlags::default();
            let names = project.select(&args.services, &flags)?;
            let plans = names
                .iter()
                .map(|n| project.plan(n, &flags))
                .collect::<Result<Vec<_>>>()?;
            printer.raw(&outputs::tilt::render(
                &plans,
                &args.fastbuild_command,
                &args.helm,
            ));
            Ok(())
        }
        Command::Doctor(args) => {
            let project = Project::load(cli.project_file.as_deref(), &cli.allow)?;
            doctor::run(&project, &args, printer).await
        }
        Command::Watch(args) => {
            let project = Project::load(cli.project_file.as_deref(), &cli.allow)?;
            watch::run(project, cli.project_file.clone(), &args, printer, cancel).await
        }
    }
}
