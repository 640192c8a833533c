//! The one place user-facing output is written.
//!
//! Results (`service  repo@sha256:…`, the helm command, the Tiltfile fragment) go to stdout;
//! progress and notes go to stderr — plain lines, a live view on a terminal, JSON lines with
//! `--progress json` (on stdout, one object per line), or nothing with `quiet`.
#![allow(clippy::print_stdout, clippy::print_stderr)] // this module is the printer

use std::fmt::{self, Write as _};
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;

use fastbuild_oci::{Digest, PushStats, Reference};
use serde::Serialize;

use crate::atomic::WriteOutcome;
use crate::cli::ProgressMode;

mod live;

use live::Live;

/// What a service is doing, for the live view and JSON events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ServiceState {
    /// Waiting for a change.
    Idle,
    /// Building; `step` is the current step name.
    Building {
        /// Current step.
        step: String,
        /// Steps completed.
        done: usize,
    },
    /// Pushed; the image reference pinned by digest.
    Pushed {
        /// `repo@sha256:…`.
        reference: String,
    },
    /// Failed.
    Failed {
        /// The error, one line.
        error: String,
    },
    /// Deploying with helm.
    Deploying,
}

/// One progress event from a build.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A build step started.
    StepStarted {
        /// Service.
        service: String,
        /// Step name as BuildKit (or the native builder) names it.
        step: String,
    },
    /// A build step finished.
    StepDone {
        /// Service.
        service: String,
        /// Step.
        step: String,
        /// Served from cache.
        cached: bool,
        /// Wall time in milliseconds.
        duration_ms: u64,
        /// Error, if the step failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Log output of a step.
    Log {
        /// Service.
        service: String,
        /// Step.
        step: String,
        /// Text.
        text: String,
    },
    /// A service changed state.
    State {
        /// Service.
        service: String,
        /// State.
        #[serde(flatten)]
        state: ServiceState,
    },
    /// A note for the user.
    Note {
        /// Service, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        /// What it says (worded by the printer; a string in JSON).
        message: Message,
    },
}

/// What a note says: free text, or a structured thing that the printer words — the same
/// words on a terminal, in plain lines and as the `message` string of a JSON note.
#[derive(Debug, Clone)]
pub enum Message {
    /// Free text.
    Text(String),
    /// Not built: the inputs are those of the build at `built_at` (Unix seconds), whose image
    /// the registry still serves.
    Reused {
        /// When the reused build ran.
        built_at: u64,
        /// Its digest.
        digest: Digest,
    },
    /// What a push did with each blob.
    Blobs(PushStats),
    /// An image copied to another repository (`promote --to-registry`).
    Copied {
        /// Where it went (`repo@sha256:…`).
        reference: String,
        /// Manifests copied.
        manifests: usize,
        /// What happened to each blob.
        stats: PushStats,
    },
    /// A values file written, or found holding these bytes already.
    ValuesFile {
        /// The file.
        path: PathBuf,
        /// Written or unchanged.
        outcome: WriteOutcome,
    },
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let blobs = |f: &mut fmt::Formatter<'_>, s: &PushStats| {
            write!(
                f,
                "blobs: {} uploaded ({} bytes), {} already there, {} mounted",
                s.blobs_uploaded, s.bytes_uploaded, s.blobs_skipped, s.blobs_mounted
            )
        };
        match self {
            Self::Text(text) => f.write_str(text),
            Self::Reused { built_at, digest } => write!(
                f,
                "unchanged since its build of {}: reusing {digest} without a solve (--force \
                 builds anyway)",
                time_shown(*built_at)
            ),
            Self::Blobs(stats) => blobs(f, stats),
            Self::Copied {
                reference,
                manifests,
                stats,
            } => {
                write!(f, "copied to {reference}: {manifests} manifest(s); ")?;
                blobs(f, stats)
            }
            Self::ValuesFile {
                path,
                outcome: WriteOutcome::Written,
            } => write!(f, "wrote {}", path.display()),
            Self::ValuesFile {
                path,
                outcome: WriteOutcome::Unchanged,
            } => write!(f, "{} unchanged", path.display()),
        }
    }
}

impl Serialize for Message {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl From<String> for Message {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

impl From<&str> for Message {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

impl From<&String> for Message {
    fn from(text: &String) -> Self {
        Self::Text(text.clone())
    }
}

/// A result line on stdout: what a command made of one service.
#[derive(Clone, Copy)]
pub enum Outcome<'a> {
    /// `service  reference`, the name padded to `width` so that a column of them lines up.
    Image {
        /// The service.
        service: &'a str,
        /// Width of the name column (0: no padding).
        width: usize,
        /// The image: `repo@sha256:…`, or what stands for it (`oci:DIR@…`, a bare digest).
        reference: &'a dyn fmt::Display,
    },
    /// A manifest `prune` deleted, or with `--dry-run` would delete.
    Pruned {
        /// The service.
        service: &'a str,
        /// Nothing was deleted.
        dry_run: bool,
        /// `repo@sha256:…`.
        reference: &'a Reference,
        /// The tags it had.
        tags: &'a [String],
    },
}

impl fmt::Display for Outcome<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Image {
                service,
                width,
                reference,
            } => write!(f, "{service:width$}  {reference}"),
            Self::Pruned {
                service,
                dry_run,
                reference,
                tags,
            } => {
                let verb = if dry_run { "would delete" } else { "deleted" };
                write!(f, "{service}  {verb} {reference} ({})", tags.join(", "))
            }
        }
    }
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn time_shown(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The printer. Cheap to clone; all clones share one terminal state.
#[derive(Debug, Clone)]
pub struct Printer {
    mode: ProgressMode,
    color: bool,
    live: Option<Arc<Live>>,
}

impl Printer {
    /// A printer for `mode`; `auto` becomes a live view when stderr is a terminal.
    pub fn new(mode: ProgressMode) -> Self {
        let tty = std::io::stderr().is_terminal();
        let color = tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        let mode = match mode {
            ProgressMode::Auto if !tty => ProgressMode::Plain,
            m => m,
        };
        let live = (mode == ProgressMode::Auto).then(|| Arc::new(Live::new(color)));
        Self { mode, color, live }
    }

    /// The effective mode (`auto` only on a terminal).
    pub fn mode(&self) -> ProgressMode {
        self.mode
    }

    /// JSON mode.
    pub fn is_json(&self) -> bool {
        self.mode == ProgressMode::Json
    }

    fn paint(&self, code: &str, s: &str) -> String {
        paint(self.color, code, s)
    }

    /// Runs `f` (which writes whole lines to stdout or stderr) with the live view, if one is
    /// drawn, lifted out of the way: the lines land above it, and it is redrawn below them.
    fn above_live<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.live {
            Some(live) => live.multi.suspend(f),
            None => f(),
        }
    }

    /// A result on stdout: printed in every mode but JSON (where events carry it).
    pub fn result(&self, line: Outcome<'_>) {
        if self.is_json() {
            return;
        }
        self.above_live(|| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        });
    }

    /// Raw text on stdout (command output such as a Tiltfile fragment), in every mode.
    pub fn raw(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    /// A JSON value on stdout, one line.
    pub fn json<T: Serialize>(&self, value: &T) {
        let line =
            serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// A note on stderr (not in quiet mode; an event in JSON mode).
    pub fn note(&self, service: Option<&str>, message: impl Into<Message>) {
        self.note_message(service, &message.into());
    }

    fn note_message(&self, service: Option<&str>, message: &Message) {
        match self.mode {
            ProgressMode::Quiet => {}
            ProgressMode::Json => self.json(&Event::Note {
                service: service.map(str::to_owned),
                message: message.clone(),
            }),
            _ => {
                let prefix = service
                    .map(|s| format!("{} ", self.paint("1", &format!("[{s}]"))))
                    .unwrap_or_default();
                self.above_live(|| eprintln!("{prefix}{message}"));
            }
        }
    }

    /// A warning on stderr (shown in quiet mode too).
    pub fn warn(&self, message: &str) {
        if self.is_json() {
            self.json(&Event::Note {
                service: None,
                message: Message::Text(format!("warning: {message}")),
            });
            return;
        }
        let label = self.paint("33", "warning:");
        self.above_live(|| eprintln!("{label} {message}"));
    }

    /// An error with its causes: `error: …` then one `Caused by: …` per source.
    pub fn error(&self, err: &anyhow::Error) {
        let mut s = format!("{} {err}", self.paint("31;1", "error:"));
        for cause in err.chain().skip(1) {
            let text = cause.to_string();
            for (i, line) in text.lines().enumerate() {
                if i == 0 {
                    let _ = write!(s, "\n  {} {line}", self.paint("31", "Caused by:"));
                } else {
                    let _ = write!(s, "\n    {line}");
                }
            }
        }
        self.above_live(|| eprintln!("{s}"));
    }

    /// Ends the live view, if one is drawn: it is cleared and each service's last state is
    /// printed once, as plain lines (cut to the terminal's width), so that results and errors
    /// printed after it read below the final states. Idempotent; a no-op in other modes. Later
    /// notes and results are printed as plain lines.
    pub fn finish_live(&self) {
        if let Some(live) = &self.live {
            live.finish();
        }
    }

    /// A writer for one log line (`tracing`'s output), written to stderr when dropped: above
    /// the live view while one is drawn, so that logs never interleave with it.
    pub fn log_line(&self) -> LogLine {
        LogLine {
            live: self.live.clone(),
            buf: Vec::new(),
        }
    }

    /// A build progress event.
    pub fn event(&self, event: &Event) {
        match self.mode {
            ProgressMode::Quiet => {}
            ProgressMode::Json => self.json(event),
            ProgressMode::Plain => self.plain_event(event),
            ProgressMode::Auto => match event {
                // logs only matter for failing steps; the builder reports them with the error
                Event::Log { .. } => {}
                Event::Note { service, message } => self.note_message(service.as_deref(), message),
                _ => {
                    if let Some(live) = &self.live {
                        live.event(event);
                    }
                }
            },
        }
    }

    fn plain_event(&self, event: &Event) {
        match event {
            Event::StepStarted { .. } => {}
            Event::StepDone {
                service,
                step,
                cached,
                duration_ms,
                error,
            } => {
                let status = if let Some(e) = error {
                    format!("ERROR {e}")
                } else if *cached {
                    "CACHED".to_owned()
                } else {
                    format!("DONE {:.1}s", *duration_ms as f64 / 1000.0)
                };
                eprintln!("[{service}] {step} {status}");
            }
            Event::Log { service, text, .. } => {
                for line in text.lines() {
                    eprintln!("[{service}]   | {line}");
                }
            }
            Event::State { service, state } => match state {
                ServiceState::Idle | ServiceState::Building { .. } => {}
                ServiceState::Pushed { reference } => eprintln!("[{service}] pushed {reference}"),
                // The error itself is printed once, with its causes, by whoever handles it.
                ServiceState::Failed { .. } => eprintln!("[{service}] failed"),
                ServiceState::Deploying => eprintln!("[{service}] deploying"),
            },
            Event::Note { service, message } => self.note_message(service.as_deref(), message),
        }
    }
}

/// One log line on its way to stderr; see [`Printer::log_line`].
#[derive(Debug)]
pub struct LogLine {
    live: Option<Arc<Live>>,
    buf: Vec<u8>,
}

impl std::io::Write for LogLine {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let write = || {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(&self.buf);
            let _ = err.flush();
        };
        match &self.live {
            Some(live) => live.multi.suspend(write),
            None => write(),
        }
    }
}

fn paint(color: bool, code: &str, s: &str) -> String {
    if color {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_owned()
    }
}

/// Text from a builder or an error, made safe for one terminal line: runs of whitespace
/// (newlines included) become one space, other control characters (escape sequences) `?`.
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().map(|c| if c.is_control() { '?' } else { c }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_text_becomes_one_safe_line() {
        assert_eq!(
            one_line("RUN <<EOF\n  echo hi\r\n\tEOF\x1b[2J"),
            "RUN <<EOF echo hi EOF?[2J"
        );
        assert_eq!(one_line("  "), "");
    }
}
