//! The one place user-facing output is written.
//!
//! Results (`service  repo@sha256:…`, the helm command, the Tiltfile fragment) go to stdout;
//! progress and notes go to stderr — plain lines, a live view on a terminal, JSON lines with
//! `--progress json` (on stdout, one object per line), or nothing with `quiet`.
#![allow(clippy::print_stdout, clippy::print_stderr)] // this module is the printer

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
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
    pub fn result(&self, line: &str) {
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
    pub fn note(&self, service: Option<&str>, message: &str) {
        match self.mode {
            ProgressMode::Quiet => {}
            ProgressMode::Json => self.json(&Event::Note {
                service: service.map(str::to_owned),
                message: message.to_owned(),
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
                message: format!("warning: {message}"),
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
                Event::Note { service, message } => self.note(service.as_deref(), message),
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
            Event::Note { service, message } => self.note(service.as_deref(), message),
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

/// A step or service clock as the live view shows it: `2.1s`.
fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// The live view on a terminal, drawn by indicatif: one line per service (its state; while
/// building, its oldest running step and how long that has run), then one line per other
/// running step. A finished step's line goes away; a finished service keeps its one line.
/// Every line is cut to the terminal's width, measured at each draw (indicatif's
/// `{wide_msg}`), so none wraps; notes, logs and results are printed above it
/// ([`MultiProgress::suspend`]).
#[derive(Debug)]
struct Live {
    multi: MultiProgress,
    color: bool,
    state: Mutex<LiveState>,
}

#[derive(Debug, Default)]
struct LiveState {
    services: BTreeMap<String, ServiceView>,
    /// Width of the service-name column.
    name_width: usize,
    finished: bool,
}

/// One service in the live view.
#[derive(Debug)]
struct ServiceView {
    state: ServiceState,
    /// The service's line.
    line: ProgressBar,
    /// Whether `line` shows a clock (and ticks).
    clocked: bool,
    /// When the current state began (a build: when it started).
    since: Instant,
    /// Steps finished in this build.
    done: usize,
    /// Running steps, oldest first.
    running: Vec<RunningStep>,
}

#[derive(Debug)]
struct RunningStep {
    name: String,
    since: Instant,
    /// Its own line: every running step but the first, which the service's line shows.
    line: Option<ProgressBar>,
}

/// Stderr's terminal as indicatif draws on it: [`Screen::MARGIN`] columns narrower than it is.
///
/// indicatif pads every line to the width and relies on the terminal's automatic wrap to reach
/// the next line, so the cursor rests at the very end of the last line; a `^C` the terminal
/// echoes there would wrap onto a line of its own that the next clear does not know about,
/// leaving a stale line behind. Here the wrap happens `MARGIN` columns early (an explicit line
/// break where the terminal would have wrapped, exactly as indicatif counts lines), so the
/// cursor rests with room to spare.
#[derive(Debug)]
struct Screen {
    term: console::Term,
    /// The cursor's column, as far as what was written through here tells.
    col: Mutex<usize>,
}

impl Screen {
    /// Room for an echoed `^C`.
    const MARGIN: u16 = 2;

    fn new(term: console::Term) -> Self {
        Self {
            term,
            col: Mutex::new(0),
        }
    }

    fn col(&self) -> std::sync::MutexGuard<'_, usize> {
        self.col
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `s` written from column `*col` on a terminal `width` columns wide that wraps on its own:
/// with a line break (`\r\n`) wherever that terminal would wrap. Escape sequences take no room.
/// Trailing spaces that fit on the line (indicatif's padding to the width) become an erase to
/// the end of the line: a terminal that re-flows its lines when it gets narrower then has no
/// padding to re-flow, only text.
fn wrap_at(s: &str, col: &mut usize, width: usize) -> String {
    let text = s.trim_end_matches(' ');
    let padding = s.len() - text.len();
    let mut out = wrap_text(text, col, width);
    if padding > 0 {
        if *col + padding <= width {
            out.push_str("\x1b[K");
            *col += padding;
        } else {
            out.push_str(&wrap_text(&s[text.len()..], col, width));
        }
    }
    out
}

fn wrap_text(s: &str, col: &mut usize, width: usize) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut buf = [0u8; 4];
    for (part, is_ansi) in console::AnsiCodeIterator::new(s) {
        if is_ansi {
            out.push_str(part);
            continue;
        }
        for c in part.chars() {
            if c == '\n' {
                out.push_str("\r\n");
                *col = 0;
                continue;
            }
            let w = console::measure_text_width(c.encode_utf8(&mut buf));
            if *col + w > width && *col > 0 {
                out.push_str("\r\n");
                *col = 0;
            }
            out.push(c);
            *col += w;
        }
    }
    out
}

impl indicatif::TermLike for Screen {
    fn width(&self) -> u16 {
        self.term.size().1.saturating_sub(Self::MARGIN).max(1)
    }

    fn height(&self) -> u16 {
        self.term.size().0
    }

    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        self.term.move_cursor_up(n)
    }

    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        self.term.move_cursor_down(n)
    }

    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        *self.col() += n;
        self.term.move_cursor_right(n)
    }

    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        let mut col = self.col();
        *col = col.saturating_sub(n);
        self.term.move_cursor_left(n)
    }

    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(s)?;
        *self.col() = 0;
        self.term.write_str("\n")
    }

    fn write_str(&self, s: &str) -> std::io::Result<()> {
        let width = usize::from(self.width());
        let text = wrap_at(s, &mut self.col(), width);
        self.term.write_str(&text)
    }

    fn clear_line(&self) -> std::io::Result<()> {
        *self.col() = 0;
        self.term.clear_line()
    }

    fn flush(&self) -> std::io::Result<()> {
        self.term.flush()
    }
}

/// How often running clocks are redrawn.
const TICK: Duration = Duration::from_millis(100);

impl Live {
    fn new(color: bool) -> Self {
        Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::term_like_with_hz(
                Box::new(Screen::new(console::Term::buffered_stderr())),
                20,
            )),
            color,
            state: Mutex::new(LiveState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LiveState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn style(clock: bool) -> ProgressStyle {
        if clock {
            ProgressStyle::with_template("{wide_msg} {clock}")
                .expect("valid template")
                .with_key("clock", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&seconds(s.elapsed()));
                })
        } else {
            ProgressStyle::with_template("{wide_msg}").expect("valid template")
        }
    }

    /// A line not drawn anywhere yet: the caller adds it to `multi` (then it may tick).
    fn new_line(clock: bool) -> ProgressBar {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
            .with_style(Self::style(clock))
    }

    fn event(&self, event: &Event) {
        let mut st = self.lock();
        if st.finished {
            return;
        }
        let service = match event {
            Event::StepStarted { service, .. }
            | Event::StepDone { service, .. }
            | Event::State { service, .. } => service,
            Event::Log { .. } | Event::Note { .. } => return,
        };
        if !st.services.contains_key(service) {
            self.add_service(&mut st, service);
        }
        let now = Instant::now();
        let view = st.services.get_mut(service).expect("added above");
        match event {
            Event::StepStarted { step, .. } => {
                view.running.push(RunningStep {
                    name: one_line(step),
                    since: now,
                    line: None,
                });
            }
            Event::StepDone { step, .. } => {
                let step = one_line(step);
                if let Some(i) = view.running.iter().position(|r| r.name == step) {
                    let r = view.running.remove(i);
                    if let Some(line) = r.line {
                        self.remove(&line);
                    }
                }
                view.done += 1;
            }
            Event::State { state, .. } => {
                // `Building` starts a build (in watch mode possibly replacing a cancelled one,
                // whose steps never finish): its own step count, clock and steps.
                if matches!(state, ServiceState::Building { .. }) {
                    view.done = 0;
                    view.since = now;
                } else if view.state != *state {
                    view.since = now;
                }
                for r in view.running.drain(..) {
                    if let Some(line) = r.line {
                        self.remove(&line);
                    }
                }
                view.state = state.clone();
            }
            Event::Log { .. } | Event::Note { .. } => {}
        }
        let width = st.name_width;
        let view = st.services.get_mut(service).expect("added above");
        self.show(service, view, width);
    }

    /// Adds a service's line, in name order, and widens the name column if needed.
    fn add_service(&self, st: &mut LiveState, service: &str) {
        let line = Self::new_line(false);
        let line = match st
            .services
            .range::<str, _>((
                std::ops::Bound::Excluded(service),
                std::ops::Bound::Unbounded,
            ))
            .next()
        {
            Some((_, next)) => self.multi.insert_before(&next.line, line),
            None => self.multi.add(line),
        };
        st.services.insert(
            service.to_owned(),
            ServiceView {
                state: ServiceState::Idle,
                line,
                clocked: false,
                since: Instant::now(),
                done: 0,
                running: Vec::new(),
            },
        );
        let width = console::measure_text_width(service);
        if width > st.name_width {
            st.name_width = width;
            for (name, view) in &mut st.services {
                self.show(name, view, width);
            }
        }
    }

    fn remove(&self, line: &ProgressBar) {
        line.disable_steady_tick();
        line.finish_and_clear();
        self.multi.remove(line);
    }

    /// Brings a service's lines up to date with its state.
    fn show(&self, name: &str, view: &mut ServiceView, name_width: usize) {
        let (text, since) = summary(name, view, name_width, self.color);
        let clocked = since.is_some();
        if clocked != view.clocked {
            view.line.set_style(Self::style(clocked));
            if clocked {
                view.line.enable_steady_tick(TICK);
            } else {
                view.line.disable_steady_tick();
            }
            view.clocked = clocked;
        }
        if let Some(since) = since {
            view.line.set_elapsed(since.elapsed());
        }
        view.line.set_message(text);
        // The first running step is on the service's line; each other one has a line of its
        // own, below the service's (and its earlier steps'), in the order they started.
        let mut anchor = view.line.clone();
        for (i, step) in view.running.iter_mut().enumerate() {
            if i == 0 {
                if let Some(line) = step.line.take() {
                    self.remove(&line);
                }
                continue;
            }
            let since = step.since;
            let line = step.line.get_or_insert_with(|| {
                let line = self.multi.insert_after(&anchor, Self::new_line(true));
                line.set_elapsed(since.elapsed());
                line.enable_steady_tick(TICK);
                line
            });
            line.set_message(format!("{:name_width$}  => {}", "", step.name));
            anchor = line.clone();
        }
    }

    fn finish(&self) {
        let mut st = self.lock();
        if st.finished {
            return;
        }
        st.finished = true;
        let services = std::mem::take(&mut st.services);
        for view in services.values() {
            for line in view.running.iter().filter_map(|r| r.line.as_ref()) {
                line.disable_steady_tick();
                self.multi.remove(line);
            }
            view.line.disable_steady_tick();
            self.multi.remove(&view.line);
        }
        let width = usize::from(console::Term::stderr().size().1);
        let lines: Vec<String> = services
            .iter()
            .map(|(name, view)| {
                let (text, _) = summary(name, view, st.name_width, self.color);
                console::truncate_str(&text, width, "…").into_owned()
            })
            .collect();
        // Clears what is drawn, prints the final states in its place; nothing is left to redraw.
        self.multi.suspend(|| {
            let mut err = std::io::stderr().lock();
            for line in &lines {
                let _ = writeln!(err, "{line}");
            }
            let _ = err.flush();
        });
    }
}

/// A service's line (without the clock) and since when its clock runs, if it has one.
fn summary(
    name: &str,
    view: &ServiceView,
    name_width: usize,
    color: bool,
) -> (String, Option<Instant>) {
    let (state, since) = match &view.state {
        ServiceState::Idle => (paint(color, "2", "idle"), None),
        ServiceState::Building { step, .. } => {
            let building = paint(color, "36", "building");
            match view.running.first() {
                Some(r) => (
                    format!("{building} step {}: {}", view.done + 1, r.name),
                    Some(r.since),
                ),
                None if view.done == 0 => {
                    (format!("{building}: {}", one_line(step)), Some(view.since))
                }
                None => (
                    format!("{building} step {}", view.done + 1),
                    Some(view.since),
                ),
            }
        }
        ServiceState::Pushed { reference } => (
            format!("{} {}", paint(color, "32", "pushed"), one_line(reference)),
            None,
        ),
        ServiceState::Failed { error } => (
            format!(
                "{} {}",
                paint(color, "31", "failed"),
                one_line(error.lines().next().unwrap_or_default())
            ),
            None,
        ),
        ServiceState::Deploying => (paint(color, "35", "deploying"), Some(view.since)),
    };
    (format!("{name:name_width$}  {state}"), since)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: ServiceState, done: usize, running: &[&str]) -> ServiceView {
        ServiceView {
            state,
            line: ProgressBar::hidden(),
            clocked: false,
            since: Instant::now(),
            done,
            running: running
                .iter()
                .map(|n| RunningStep {
                    name: (*n).to_owned(),
                    since: Instant::now(),
                    line: None,
                })
                .collect(),
        }
    }

    #[test]
    fn builder_text_becomes_one_safe_line() {
        assert_eq!(
            one_line("RUN <<EOF\n  echo hi\r\n\tEOF\x1b[2J"),
            "RUN <<EOF echo hi EOF?[2J"
        );
        assert_eq!(one_line("  "), "");
    }

    #[test]
    fn a_service_line_shows_its_first_running_step_and_its_final_state() {
        let building = ServiceState::Building {
            step: "starting".into(),
            done: 0,
        };
        let (text, clock) = summary("api", &view(building.clone(), 0, &[]), 6, false);
        assert_eq!(text, "api     building: starting");
        assert!(clock.is_some());
        let (text, _) = summary(
            "api",
            &view(building.clone(), 2, &["RUN make", "COPY . /"]),
            6,
            false,
        );
        assert_eq!(text, "api     building step 3: RUN make");
        let (text, _) = summary("api", &view(building, 3, &[]), 3, false);
        assert_eq!(text, "api  building step 4");
        let pushed = ServiceState::Pushed {
            reference: "r/api@sha256:ab".into(),
        };
        let (text, clock) = summary("api", &view(pushed, 3, &[]), 3, false);
        assert_eq!(
            (text.as_str(), clock),
            ("api  pushed r/api@sha256:ab", None)
        );
        let failed = ServiceState::Failed {
            error: "boom\ncaused by: more".into(),
        };
        let (text, clock) = summary("api", &view(failed, 1, &[]), 3, false);
        assert_eq!((text.as_str(), clock), ("api  failed boom", None));
    }

    #[test]
    fn the_screen_wraps_where_a_narrower_terminal_would() {
        let mut col = 0;
        // indicatif's way: each line padded to the width, the next one written right after.
        assert_eq!(wrap_at("abcd", &mut col, 4), "abcd");
        assert_eq!(col, 4);
        assert_eq!(wrap_at("ef", &mut col, 4), "\r\nef");
        // Padding to the width: erased, not written.
        assert_eq!(wrap_at("  ", &mut col, 4), "\x1b[K");
        assert_eq!(col, 4);
        assert_eq!(wrap_at("", &mut col, 4), "");
        assert_eq!(wrap_at("g", &mut col, 4), "\r\ng");
        assert_eq!(wrap_at("    ", &mut col, 4), "   \r\n ");
        assert_eq!(col, 1);
        // Escape sequences take no room; a wide character that does not fit goes to the next line.
        let mut col = 2;
        assert_eq!(
            wrap_at("\x1b[32mx\x1b[0m界", &mut col, 4),
            "\x1b[32mx\x1b[0m\r\n界"
        );
        assert_eq!(col, 2);
        let mut col = 0;
        assert_eq!(wrap_at("abcdef", &mut col, 4), "abcd\r\nef");
        assert_eq!(col, 2);
    }

    #[test]
    fn clocks_read_in_tenths_of_a_second() {
        assert_eq!(seconds(Duration::from_millis(2149)), "2.1s");
        assert_eq!(seconds(Duration::ZERO), "0.0s");
    }
}
