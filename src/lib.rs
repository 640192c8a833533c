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
pub mod cluster_registry;
pub mod config;
pub mod doctor;
pub mod error;
pub mod history;
pub mod inputs;
pub mod outputs;
pub mod pipeline;
pub mod printer;
pub mod promote;
pub mod prune;
pub mod reuse;
pub mod rollback;
pub mod settings;
pub mod watch;

use anyhow::Result;
use clap::{CommandFactory as _, Parser as _};
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command};
use crate::printer::Printer;
use crate::settings::Project;

pub use error::{Interrupted, UsageError, exit};

/// The progress mode: `--progress` / `FASTBUILD_PROGRESS` when given, else buildx's
/// `BUILDKIT_PROGRESS` (`tty` is the live view, `rawjson` the JSON lines), else `auto`. An
/// unknown `BUILDKIT_PROGRESS` value is ignored with a warning (`Err` carries it).
pub fn progress_mode(
    flag: Option<cli::ProgressMode>,
    buildkit_progress: Option<&str>,
) -> (cli::ProgressMode, Option<String>) {
    use cli::ProgressMode as M;
    if let Some(m) = flag {
        return (m, None);
    }
    match buildkit_progress.map(str::trim) {
        None | Some("") => (M::Auto, None),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "auto" | "tty" => (M::Auto, None),
            "plain" => (M::Plain, None),
            "quiet" | "none" => (M::Quiet, None),
            "rawjson" | "json" => (M::Json, None),
            _ => (
                M::Auto,
                Some(format!(
                    "BUILDKIT_PROGRESS=`{v}` is not one of auto, tty, plain, quiet, rawjson; \
                     using auto (set --progress to choose)"
                )),
            ),
        },
    }
}

/// Which signal ended the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Interrupt,
    Terminate,
}

/// Cancels `cancel` on SIGINT (Ctrl-C) or SIGTERM and records which came first.
fn watch_signals(cancel: CancellationToken, stop: std::sync::Arc<std::sync::OnceLock<Stop>>) {
    tokio::spawn(async move {
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::warn!("cannot listen for SIGTERM: {e}");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        let which = tokio::select! {
            r = tokio::signal::ctrl_c() => match r {
                Ok(()) => Stop::Interrupt,
                Err(_) => return,
            },
            () = terminate => Stop::Terminate,
        };
        let _ = stop.set(which);
        cancel.cancel();
    });
}

/// Logs go to stderr through the printer: above the live view while one is drawn, never
/// into it.
fn init_tracing(verbose: u8, printer: &Printer) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "fastbuild=debug,fastbuild_buildkit=debug,fastbuild_oci=debug,info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer({
            let printer = printer.clone();
            move || printer.log_line()
        })
        // Colours only for a person at a terminal: never into pipes, files or CI logs.
        .with_ansi(
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .try_init();
}

/// Runs the CLI with the process arguments; returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let (mode, warning) = progress_mode(
        cli.progress,
        std::env::var("BUILDKIT_PROGRESS").ok().as_deref(),
    );
    let printer = Printer::new(mode);
    init_tracing(cli.verbose, &printer);
    if let Some(w) = warning {
        printer.warn(&w);
    }
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
    let stop = std::sync::Arc::new(std::sync::OnceLock::new());
    let (c, s, p) = (cancel.clone(), stop.clone(), printer.clone());
    let result = runtime.block_on(async move {
        watch_signals(c, s);
        run(cli, &p, &cancel).await
    });
    // Every output is written by now (atomically, before `run` returned): do not wait for idle
    // connections and tasks to wind down (measured ~50 ms on a loaded machine).
    runtime.shutdown_background();
    // The live view (if still drawn: an error, an interrupted build or watch) gives way to the
    // final states, above the closing error or warning.
    printer.finish_live();
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            if e.downcast_ref::<Interrupted>().is_some() {
                return if stop.get() == Some(&Stop::Terminate) {
                    printer.warn("terminated (SIGTERM); nothing partial was written");
                    exit::TERMINATED
                } else {
                    printer.warn("interrupted; nothing partial was written");
                    exit::INTERRUPTED
                };
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
                match outputs::helm::run(&plan, &args.helm.program, args.force).await? {
                    outputs::helm::RunOutcome::Deployed => printer.note(Some(&plan.name), "helm upgrade succeeded"),
                    outputs::helm::RunOutcome::Skipped => printer.note(
                        Some(&plan.name),
                        "skipped helm upgrade: digest, values files and chart unchanged since the last successful run (--force to run anyway)",
                    ),
                }
            } else {
                let cwd = std::env::current_dir()?;
                let helm_argv = outputs::helm::argv_relative(&plan, &cwd, &args.helm.program)?;
                printer.raw(&format!(
                    "{}\n",
                    outputs::helm::shell_line(&args.helm.program, &helm_argv)
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
                args.session_settings,
            ));
            Ok(())
        }
        Command::History(args) => {
            let project = Project::load(cli.project_file.as_deref(), &cli.allow)?;
            rollback::list(&project, &args, printer)
        }
        Command::Rollback(args) => {
            let project = Project::load(cli.project_file.as_deref(), &cli.allow)?;
            rollback::rollback(&project, &args, printer).await
        }
        Command::Doctor(args) => {
            let project = Project::load(cli.project_file.as_deref(), &cli.allow)?;
            doctor::run(&project, &args, printer).await
        }
        Command::Promote(args) => {
            let project = Project::load(cli.project_file.as_deref(), &cli.allow)?;
            promote::run(&project, &args, printer, cancel).await
        }
        Command::Prune(args) => {
            let project = Project::load(cli.project_file.as_deref(), &cli.allow)?;
            prune::run(&project, &args, printer, cancel).await
        }
        Command::Watch(args) => {
            let project = Project::load(cli.project_file.as_deref(), &cli.allow)?;
            watch::run(project, cli.project_file.clone(), &args, printer, cancel).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cli::ProgressMode as M;

    #[test]
    fn buildkit_progress_maps_onto_progress_below_the_flag() {
        assert_eq!(
            progress_mode(Some(M::Quiet), Some("plain")),
            (M::Quiet, None)
        );
        assert_eq!(progress_mode(None, None), (M::Auto, None));
        assert_eq!(progress_mode(None, Some("")), (M::Auto, None));
        for (v, m) in [
            ("auto", M::Auto),
            ("tty", M::Auto),
            ("plain", M::Plain),
            ("PLAIN", M::Plain),
            ("quiet", M::Quiet),
            ("rawjson", M::Json),
        ] {
            assert_eq!(progress_mode(None, Some(v)), (m, None), "{v}");
        }
        let (m, w) = progress_mode(None, Some("fancy"));
        assert_eq!(m, M::Auto);
        assert!(w.unwrap().contains("BUILDKIT_PROGRESS=`fancy`"));
    }
}
