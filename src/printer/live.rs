//! The live view on a terminal: one line per service and per running step, drawn by
//! indicatif on a [`Screen`] that wraps as the terminal would, and the service lines' text.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use super::{Event, ServiceState, one_line, paint};

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
pub(super) struct Live {
    pub(super) multi: MultiProgress,
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
    pub(super) fn new(color: bool) -> Self {
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

    pub(super) fn event(&self, event: &Event) {
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

    pub(super) fn finish(&self) {
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
