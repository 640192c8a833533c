//! The one place user-facing output is written.
//!
//! Results (`service  repo@sha256:…`, the helm command, the Tiltfile fragment) go to stdout;
//! progress and notes go to stderr — plain lines, a live view on a terminal, JSON lines with
//! `--progress json` (on stdout, one object per line), or nothing with `quiet`.
#![allow(clippy::print_stdout, clippy::print_stderr)] // this module is the printer

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::fmt::Write as _;

use serde::Serialize;

use crate::cli::ProgressMode;

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
        /// Text.
        message: String,
    },
}

#[derive(Debug)]
struct Live {
    services: BTreeMap<String, ServiceState>,
    lines_drawn: usize,
    last_draw: Option<Instant>,
}

/// The printer. Cheap to clone; all clones share one terminal state.
#[derive(Debug, Clone)]
pub struct Printer {
    mode: ProgressMode,
    color: bool,
    live: Option<Arc<Mutex<Live>>>,
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
        let live = (mode == ProgressMode::Auto).then(|| {
            Arc::new(Mutex::new(Live {
                services: BTreeMap::new(),
                lines_drawn: 0,
                last_draw: None,
            }))
        });
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
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }

    /// A result on stdout: printed in every mode but JSON (where events carry it).
    pub fn result(&self, line: &str) {
        if self.is_json() {
            return;
        }
        self.clear_live();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        self.redraw(true);
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
    pub fn note(&self, service: Option<&str>, message: &str) {
        match self.mode {
            ProgressMode::Quiet => {}
            ProgressMode::Json => self.json(&Event::Note {
                service: service.map(str::to_owned),
                message: message.to_owned(),
            }),
            _ => {
                self.clear_live();
                let prefix = service
                    .map(|s| format!("{} ", self.paint("1", &format!("[{s}]"))))
                    .unwrap_or_default();
                eprintln!("{prefix}{message}");
                self.redraw(true);
            }
        }
    }

    /// A warning on stderr (shown in quiet mode too).
    pub fn warn(&self, message: &str) {
        if self.is_json() {
            self.json(&Event::Note {
                service: None,
                message: format!("warning: {message}"),
            });
            return;
        }
        self.clear_live();
        eprintln!("{} {message}", self.paint("33", "warning:"));
        self.redraw(true);
    }

    /// An error with its causes: `error: …` then one `Caused by: …` per source.
    pub fn error(&self, err: &anyhow::Error) {
        self.clear_live();
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
        eprintln!("{s}");
    }

    /// A build progress event.
    pub fn event(&self, event: &Event) {
        match self.mode {
            ProgressMode::Quiet => {}
            ProgressMode::Json => self.json(event),
            ProgressMode::Plain => self.plain_event(event),
            ProgressMode::Auto => {
                if let Event::Log { .. } | Event::Note { .. } = event {
                    // logs only matter for failing steps; the builder reports them with the error
                    if let Event::Note { service, message } = event {
                        self.note(service.as_deref(), message);
                    }
                    return;
                }
                self.live_event(event);
            }
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
            Event::Note { service, message } => self.note(service.as_deref(), message),
        }
    }

    fn live_event(&self, event: &Event) {
        let Some(live) = &self.live else { return };
        {
            let mut l = live
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match event {
                Event::StepStarted { service, step } => {
                    let done = match l.services.get(service) {
                        Some(ServiceState::Building { done, .. }) => *done,
                        _ => 0,
                    };
                    l.services.insert(
                        service.clone(),
                        ServiceState::Building {
                            step: step.clone(),
                            done,
                        },
                    );
                }
                Event::StepDone { service, step, .. } => {
                    if let Some(ServiceState::Building { done, .. }) =
                        l.services.get(service).cloned()
                    {
                        l.services.insert(
                            service.clone(),
                            ServiceState::Building {
                                step: step.clone(),
                                done: done + 1,
                            },
                        );
                    }
                }
                Event::State { service, state } => {
                    l.services.insert(service.clone(), state.clone());
                }
                Event::Log { .. } | Event::Note { .. } => {}
            }
        }
        let force = matches!(event, Event::State { .. });
        self.redraw(force);
    }

    fn clear_live(&self) {
        let Some(live) = &self.live else { return };
        let mut l = live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if l.lines_drawn > 0 {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\x1b[{}A\x1b[J", l.lines_drawn);
            let _ = err.flush();
            l.lines_drawn = 0;
        }
    }

    fn redraw(&self, force: bool) {
        let Some(live) = &self.live else { return };
        let mut l = live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if l.services.is_empty() {
            return;
        }
        if !force
            && l.last_draw
                .is_some_and(|t| t.elapsed() < Duration::from_millis(80))
        {
            return;
        }
        let width = l.services.keys().map(String::len).max().unwrap_or(0);
        let mut buf = String::new();
        if l.lines_drawn > 0 {
            let _ = write!(buf, "\x1b[{}A\x1b[J", l.lines_drawn);
        }
        for (name, state) in &l.services {
            let text = match state {
                ServiceState::Idle => self.paint("2", "idle"),
                ServiceState::Building { step, done } => {
                    let step: String = step.chars().take(70).collect();
                    format!(
                        "{} step {} {}",
                        self.paint("36", "building"),
                        done + 1,
                        step
                    )
                }
                ServiceState::Pushed { reference } => {
                    format!("{} {reference}", self.paint("32", "pushed"))
                }
                ServiceState::Failed { error } => {
                    let e: String = error
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .chars()
                        .take(80)
                        .collect();
                    format!("{} {e}", self.paint("31", "failed"))
                }
                ServiceState::Deploying => self.paint("35", "deploying"),
            };
            let _ = writeln!(buf, "{name:width$}  {text}");
        }
        l.lines_drawn = l.services.len();
        l.last_draw = Some(Instant::now());
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(buf.as_bytes());
        let _ = err.flush();
    }
}
