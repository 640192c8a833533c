//! `fastbuild watch`: build, then rebuild the services whose inputs change.
//!
//! Stage: drives the pipeline (settings → build → publish → outputs) on file changes. File
//! events come from `notify` (inotify, or polling with `--poll`) and pass a trailing-edge
//! debouncer: a build starts once no event arrived for the debounce window, so editor save
//! patterns (temp file + rename, swap files, bursts) give one build of the final content.
//! Events that concern no service (files outside every watch path, ignored or generated
//! files) are dropped before they can restart the window, and the window is capped, so a file
//! written continuously cannot starve a real change. A watched directory that is deleted and
//! created again (bundlers do `rm -rf dist`) gets its watches back: the parents of watched
//! directories are watched too, and the watches are set up anew when such a directory appears.
//! A change to a service that is building cancels that build (on the daemon too) and starts
//! again. Values files are rewritten only when the digest changes; deploys of one service never
//! overlap. Generated files never trigger builds.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use fastbuild_buildkit::patterns::PatternMatcher;
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::atomic::WriteOutcome;
use crate::builder::{self, ImageResult};
use crate::cli::WatchArgs;
use crate::outputs::helm;
use crate::pipeline;
use crate::printer::{Event, Outcome, Printer, ServiceState};
use crate::settings::{BuilderPlan, Delivery, Project, ServicePlan};

/// A file-system watcher of either kind.
enum AnyWatcher {
    Native(notify::RecommendedWatcher),
    Poll(notify::PollWatcher),
}

impl AnyWatcher {
    fn watch(&mut self, path: &Path, mode: RecursiveMode) -> notify::Result<()> {
        match self {
            Self::Native(w) => w.watch(path, mode),
            Self::Poll(w) => w.watch(path, mode),
        }
    }
}

fn watch_error(path: &Path, err: notify::Error) -> anyhow::Error {
    if matches!(err.kind, notify::ErrorKind::MaxFilesWatch) {
        return anyhow!(
            "cannot watch `{}`: the inotify watch limit is exhausted (fs.inotify.max_user_watches); \
             raise it with `sysctl fs.inotify.max_user_watches=524288` or run `fastbuild watch --poll`",
            path.display()
        );
    }
    if let notify::ErrorKind::Io(io) = &err.kind
        && (io.raw_os_error() == Some(libc::ENOSPC) || io.raw_os_error() == Some(libc::EMFILE))
    {
        return anyhow!(
            "cannot watch `{}`: the inotify limits are exhausted (fs.inotify.max_user_watches / \
                 max_user_instances); raise them with sysctl or run `fastbuild watch --poll`",
            path.display()
        );
    }
    anyhow::Error::new(err).context(format!("cannot watch `{}`", path.display()))
}

/// Paths that never trigger a build: fastbuild's own outputs, VCS metadata, editor droppings.
fn is_noise(path: &Path, generated: &BTreeSet<PathBuf>) -> bool {
    if generated.contains(path) {
        return true;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    if name.starts_with(".fastbuild-") && name.ends_with(".tmp") {
        return true; // atomic-write temp files
    }
    if name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with('~')
        || name == "4913"
        || name.starts_with(".#")
    {
        return true;
    }
    path.components().any(|c| {
        let c = c.as_os_str();
        c == ".git" || c == ".fastbuild"
    })
}

/// Whether a change at `path` concerns `plan`; `excluder` is the plan's ignore-file matcher
/// (see [`crate::inputs::excluder`]), read once per batch of changes.
pub fn affects(plan: &ServicePlan, excluder: Option<&PatternMatcher>, path: &Path) -> bool {
    if !plan.watch_paths.iter().any(|w| path.starts_with(w)) {
        return false;
    }
    if let BuilderPlan::Buildkit(b) = &plan.builder
        && path.starts_with(&b.context)
        && path != b.dockerfile
    {
        let rel = path.strip_prefix(&b.context).unwrap_or(path);
        // The ignore file itself and the Dockerfile always matter.
        let is_ignore_file = path == b.context.join(".dockerignore")
            || path.to_string_lossy().ends_with(".dockerignore");
        if !is_ignore_file && excluder.is_some_and(|m| m.matches(rel.as_os_str().as_bytes())) {
            return false;
        }
    }
    true
}

#[derive(Debug)]
enum Msg {
    Done {
        service: String,
        generation: u64,
        result: Result<ImageResult>,
    },
}

struct Slot {
    plan: ServicePlan,
    generation: u64,
    running: Option<CancellationToken>,
    last_digest: Option<fastbuild_oci::Digest>,
    deploy_lock: Arc<Mutex<()>>,
}

fn set_up_watcher(
    plans: &[ServicePlan],
    project_file: Option<&Path>,
    poll: bool,
    tx: mpsc::UnboundedSender<PathBuf>,
) -> Result<AnyWatcher> {
    let handler = move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if matches!(ev.kind, notify::EventKind::Access(_)) {
                return;
            }
            for p in ev.paths {
                let _ = tx.send(p);
            }
        }
    };
    let mut watcher = if poll {
        AnyWatcher::Poll(notify::PollWatcher::new(
            handler,
            // notify's poller compares mtimes in whole seconds: hash contents too, or a
            // save within the same second as the previous scan would be missed.
            notify::Config::default()
                .with_poll_interval(Duration::from_millis(250))
                .with_compare_contents(true),
        )?)
    } else {
        AnyWatcher::Native(notify::recommended_watcher(handler)?)
    };
    let mut roots: BTreeSet<(PathBuf, bool)> = BTreeSet::new();
    for plan in plans {
        for p in &plan.watch_paths {
            if p.is_dir() {
                roots.insert((p.clone(), true));
            }
            // The parent too (the nearest one that exists): a watched directory deleted and
            // created again, or a watch path that does not exist yet, shows up there.
            if let Some(parent) = p.ancestors().skip(1).find(|a| a.is_dir()) {
                roots.insert((parent.to_path_buf(), false));
            }
        }
    }
    if let Some(f) = project_file.and_then(Path::parent) {
        roots.insert((f.to_path_buf(), false));
    }
    for (root, recursive) in &roots {
        let mode = if *recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        watcher
            .watch(root, mode)
            .map_err(|e| watch_error(root, e))?;
    }
    Ok(watcher)
}

/// Whether `path` is a directory on the way to (or at) one of `plan`'s watch paths: it was
/// just created, so the watches below it must be set up again.
fn reappeared(plan: &ServicePlan, path: &Path) -> bool {
    plan.watch_paths.iter().any(|w| w.starts_with(path)) && path.is_dir()
}

/// Sets the watches up anew; when that fails (a path vanished again, a limit), the previous
/// watcher stays and the error is shown: watching goes on.
fn rewatch(
    watcher: &mut AnyWatcher,
    slots: &BTreeMap<String, Slot>,
    project_file: Option<&Path>,
    poll: bool,
    fs_tx: &mpsc::UnboundedSender<PathBuf>,
    printer: &Printer,
) {
    let plans: Vec<ServicePlan> = slots.values().map(|s| s.plan.clone()).collect();
    match set_up_watcher(&plans, project_file, poll, fs_tx.clone()) {
        Ok(w) => *watcher = w,
        Err(e) => {
            printer.error(&e.context("cannot watch the new paths; keeping the previous watches"));
        }
    }
}

/// What watch does with its images: push them; reuse an unchanged build's digest unless
/// `--force`.
fn delivery(args: &WatchArgs) -> Delivery {
    Delivery {
        reuse: if args.force {
            crate::settings::Reuse::Record
        } else {
            crate::settings::Reuse::Use
        },
        ..Delivery::default()
    }
}

/// Runs the watch loop until Ctrl-C.
#[allow(clippy::too_many_lines)]
pub async fn run(
    project: Project,
    explicit_file: Option<PathBuf>,
    args: &WatchArgs,
    printer: &Printer,
    cancel: &CancellationToken,
) -> Result<()> {
    let mut project = project;
    let flags = args.service_flags.clone();
    let names = project.select(&args.services, &flags)?;
    let mut slots: BTreeMap<String, Slot> = BTreeMap::new();
    for plan in project.plans_for(&names, &flags, &delivery(args))? {
        slots.insert(
            plan.name.clone(),
            Slot {
                plan,
                generation: 0,
                running: None,
                last_digest: None,
                deploy_lock: Arc::new(Mutex::new(())),
            },
        );
    }
    let project_file = project.file.clone();
    let plans: Vec<ServicePlan> = slots.values().map(|s| s.plan.clone()).collect();
    pipeline::warn_plaintext_remote(&plans, printer);

    let (fs_tx, mut fs_rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = set_up_watcher(&plans, project_file.as_deref(), args.poll, fs_tx.clone())?;

    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Msg>();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Event>();
    let p = printer.clone();
    tokio::spawn(async move {
        while let Some(ev) = ev_rx.recv().await {
            p.event(&ev);
        }
    });
    let sem = Arc::new(Semaphore::new(project.parallel));
    let debounce = Duration::from_millis(args.debounce);
    // However busy the tree, a batch waits at most this long after its first change.
    let max_wait = (debounce * 10).max(Duration::from_secs(1));
    let mut excluders: BTreeMap<String, Option<PatternMatcher>> = BTreeMap::new();
    let refresh_excluders =
        |slots: &BTreeMap<String, Slot>,
         excluders: &mut BTreeMap<String, Option<PatternMatcher>>| {
            excluders.clear();
            for (name, slot) in slots {
                let m = match &slot.plan.builder {
                    BuilderPlan::Buildkit(b) => crate::inputs::excluder(b),
                    BuilderPlan::Native(_) => None,
                };
                excluders.insert(name.clone(), m);
            }
        };
    refresh_excluders(&slots, &mut excluders);

    let start_build = |slot: &mut Slot, reason: Vec<PathBuf>| {
        if let Some(tok) = slot.running.take() {
            tok.cancel();
            printer.note(
                Some(&slot.plan.name),
                "cancelled the running build: inputs changed",
            );
            if printer.is_json() {
                printer.json(&serde_json::json!({"event": "cancelled", "service": slot.plan.name}));
            }
        }
        slot.generation += 1;
        let token = cancel.child_token();
        slot.running = Some(token.clone());
        let plan = slot.plan.clone();
        let generation = slot.generation;
        let done_tx = done_tx.clone();
        let ev_tx = ev_tx.clone();
        let sem = Arc::clone(&sem);
        if printer.is_json() {
            let paths: Vec<String> = reason.iter().map(|p| p.display().to_string()).collect();
            printer.json(&serde_json::json!({"event": "build_started", "service": plan.name, "generation": generation, "paths": paths}));
        } else if !reason.is_empty() {
            let shown: Vec<String> = reason
                .iter()
                .take(5)
                .map(|p| {
                    p.strip_prefix(&plan.root)
                        .unwrap_or(p)
                        .display()
                        .to_string()
                })
                .collect();
            let more = if reason.len() > 5 {
                format!(" and {} more", reason.len() - 5)
            } else {
                String::new()
            };
            printer.note(
                Some(&plan.name),
                format!("rebuilding: changed {}{more}", shown.join(", ")),
            );
        }
        tokio::spawn(async move {
            let result = tokio::select! {
                permit = sem.acquire_owned() => {
                    let _permit = permit;
                    let _ = ev_tx.send(Event::State { service: plan.name.clone(), state: ServiceState::Building { step: "starting".into(), done: 0 } });
                    tokio::select! {
                        r = builder::build(&plan, ev_tx.clone(), token.clone()) => r,
                        () = token.cancelled() => Err(anyhow!("cancelled")),
                    }
                }
                () = token.cancelled() => Err(anyhow!("cancelled")),
            };
            let _ = done_tx.send(Msg::Done {
                service: plan.name.clone(),
                generation,
                result,
            });
        });
    };

    for slot in slots.values_mut() {
        start_build(slot, Vec::new());
    }
    if printer.is_json() {
        printer.json(&serde_json::json!({"event": "watching", "services": names}));
    } else {
        printer.note(
            None,
            format!("watching {} service(s); Ctrl-C to stop", slots.len()),
        );
    }

    let mut pending: BTreeSet<PathBuf> = BTreeSet::new();
    let mut deadline: Option<Instant> = None;
    let mut first_pending: Option<Instant> = None;
    loop {
        let generated: BTreeSet<PathBuf> =
            slots.values().map(|s| s.plan.values_file.clone()).collect();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            Some(path) = fs_rx.recv() => {
                if is_noise(&path, &generated) {
                    continue;
                }
                if path.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".dockerignore")) {
                    refresh_excluders(&slots, &mut excluders);
                }
                let relevant = project_file.as_ref() == Some(&path)
                    || slots.values().any(|s| {
                        affects(&s.plan, excluders.get(&s.plan.name).and_then(Option::as_ref), &path)
                            || reappeared(&s.plan, &path)
                    });
                if relevant {
                    pending.insert(path);
                    let now = Instant::now();
                    let first = *first_pending.get_or_insert(now);
                    deadline = Some((now + debounce).min(first + max_wait));
                }
            }
            () = sleep => {
                deadline = None;
                first_pending = None;
                let changed = std::mem::take(&mut pending);
                refresh_excluders(&slots, &mut excluders);
                // The project file changed: reload it and re-plan.
                if project_file.as_ref().is_some_and(|f| changed.contains(f)) {
                    match Project::load(explicit_file.as_deref(), &project.allow).and_then(|p| {
                        let plans = p.plans_for(&names, &flags, &delivery(args))?;
                        Ok((p, plans))
                    }) {
                        Ok((p, new_plans)) => {
                            sem.add_permits(p.parallel.saturating_sub(project.parallel));
                            project = p;
                            printer.note(None, "fastbuild.yaml changed: reloaded");
                            for plan in new_plans {
                                if let Some(slot) = slots.get_mut(&plan.name)
                                    && slot.plan != plan {
                                        slot.plan = plan;
                                        start_build(slot, vec![project_file.clone().unwrap_or_default()]);
                                    }
                            }
                            refresh_excluders(&slots, &mut excluders);
                            rewatch(&mut watcher, &slots, project_file.as_deref(), args.poll, &fs_tx, printer);
                        }
                        Err(e) => printer.error(&e.context("fastbuild.yaml changed but cannot be loaded; keeping the previous settings")),
                    }
                } else if changed.iter().any(|c| slots.values().any(|s| reappeared(&s.plan, c))) {
                    // A watched directory (or a parent of a watch path) was created again: its
                    // old watches died with it.
                    rewatch(&mut watcher, &slots, project_file.as_deref(), args.poll, &fs_tx, printer);
                }
                for slot in slots.values_mut() {
                    let excluder = excluders.get(&slot.plan.name).and_then(Option::as_ref);
                    let why: Vec<PathBuf> = changed
                        .iter()
                        .filter(|p| affects(&slot.plan, excluder, p) || reappeared(&slot.plan, p))
                        .cloned()
                        .collect();
                    if !why.is_empty() {
                        start_build(slot, why);
                    }
                }
            }
            Some(Msg::Done { service, generation, result }) = done_rx.recv() => {
                let Some(slot) = slots.get_mut(&service) else { continue };
                if generation != slot.generation {
                    continue; // a superseded build
                }
                slot.running = None;
                match result {
                    Ok(image) => {
                        let changed = slot.last_digest.as_ref() != Some(&image.digest);
                        slot.last_digest = Some(image.digest.clone());
                        let _ = ev_tx.send(Event::State { service: service.clone(), state: ServiceState::Pushed { reference: image.pinned() } });
                        let outcome = crate::outputs::values::write_for(&slot.plan, &image);
                        let wrote = match &outcome {
                            Ok(WriteOutcome::Written) => true,
                            Ok(WriteOutcome::Unchanged) => false,
                            Err(e) => {
                                printer.error(&anyhow!("{e:#}"));
                                false
                            }
                        };
                        // Every new digest is history; an unchanged rebuild is not.
                        if changed {
                            crate::history::record_build(&slot.plan, &image, outcome.is_ok(), crate::history::git_state(&slot.plan.root), printer);
                        }
                        if printer.is_json() {
                            printer.json(&serde_json::json!({
                                "event": "result", "service": service, "digest": image.digest,
                                "reference": image.pinned(), "values_file": slot.plan.values_file.display().to_string(),
                                "values_written": wrote, "reused": image.reused,
                            }));
                        } else {
                            printer.result(Outcome::Image { service: &service, width: 0, reference: &image.pinned() });
                        }
                        if args.deploy && outcome.is_ok() && (changed || wrote) {
                            let plan = slot.plan.clone();
                            let lock = Arc::clone(&slot.deploy_lock);
                            let helm_bin = args.helm.program.clone();
                            let p = printer.clone();
                            let ev_tx = ev_tx.clone();
                            tokio::spawn(async move {
                                let _guard = lock.lock().await;
                                let _ = ev_tx.send(Event::State { service: plan.name.clone(), state: ServiceState::Deploying });
                                match helm::run(&plan, &helm_bin, false).await {
                                    Ok(helm::RunOutcome::Deployed) => p.note(Some(&plan.name), "deployed with helm"),
                                    Ok(helm::RunOutcome::Skipped) => p.note(Some(&plan.name), "deploy skipped: nothing changed"),
                                    Err(e) => p.error(&e.context(format!("deploy of `{}` failed; still watching", plan.name))),
                                }
                                let _ = ev_tx.send(Event::State { service: plan.name.clone(), state: ServiceState::Idle });
                            });
                        }
                    }
                    Err(e) => {
                        if printer.is_json() {
                            printer.json(&serde_json::json!({"event": "failed", "service": service, "error": format!("{e:#}")}));
                        }
                        let _ = ev_tx.send(Event::State { service: service.clone(), state: ServiceState::Failed { error: format!("{e:#}") } });
                        printer.error(&e.context(format!("build of `{service}` failed; still watching, the values file keeps its last good digest")));
                    }
                }
            }
        }
    }
    // Ctrl-C: cancel every build; nothing partial is written (outputs are written only after a
    // successful build, atomically).
    let mut in_flight = 0usize;
    for slot in slots.values_mut() {
        if let Some(t) = slot.running.take() {
            t.cancel();
            in_flight += 1;
        }
    }
    drop(watcher);
    // Give cancelled builds a moment to close their sessions on the daemon.
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while in_flight > 0 {
            if done_rx.recv().await.is_none() {
                break;
            }
            in_flight -= 1;
        }
    })
    .await;
    Err(anyhow!(crate::Interrupted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhausted_inotify_names_the_limit_and_the_fallback() {
        let err = watch_error(
            Path::new("/src"),
            notify::Error::new(notify::ErrorKind::MaxFilesWatch),
        );
        let msg = err.to_string();
        assert!(
            msg.contains("fs.inotify.max_user_watches")
                && msg.contains("--poll")
                && msg.contains("/src"),
            "{msg}"
        );
        let enospc = notify::Error::io(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(
            watch_error(Path::new("/x"), enospc)
                .to_string()
                .contains("--poll")
        );
    }

    #[test]
    fn editor_droppings_and_generated_files_are_noise() {
        let generated: BTreeSet<PathBuf> = [PathBuf::from("/p/tilt-values/a.values.yaml")].into();
        for p in [
            "/p/src/.main.rs.swp",
            "/p/src/main.rs~",
            "/p/src/4913",
            "/p/.git/index",
            "/p/tilt-values/a.values.yaml",
            "/p/tilt-values/.fastbuild-x1.tmp",
        ] {
            assert!(is_noise(Path::new(p), &generated), "{p}");
        }
        assert!(!is_noise(Path::new("/p/src/main.rs"), &generated));
    }
}
