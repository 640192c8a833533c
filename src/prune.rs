//! `fastbuild prune`: delete a repository's older fastbuild images, so that a dev registry fed
//! by `watch` does not grow all day.
//!
//! Only fastbuild's own content tags are considered: `fb-` and the first 12 hex digits of the
//! digest the tag points at (what a push without a configured tag creates). A digest that any
//! other tag also names is kept, and so is every digest a values file pins — the project's
//! values files, the services' Helm values files and any `--values FILE` (another
//! environment's). Of the rest, the `--keep N` newest stay.
//!
//! "Newest": the time the project's history journal (`.fastbuild/history.jsonl`, one JSON object
//! per line with `service`, `digest` and `time`) last recorded the digest for the service, else
//! the `created` time of the image's config (for an index, its newest platform config).
//! fastbuild's images are reproducible — `created` is SOURCE_DATE_EPOCH, the last commit of the
//! inputs (or 0) — so builds from one commit share it: digests tied at the cut-off are all
//! kept, as are images without a creation time. Nothing is deleted that fastbuild cannot tell
//! is older than what it keeps.
//!
//! Deletion is `DELETE /v2/<name>/manifests/<digest>` (the registry drops the tag with it); the
//! space comes back when the registry's garbage collector runs. A registry with deletion
//! disabled answers 405, which is reported with the setting to change.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow};
use fastbuild_oci::{Digest, FetchedManifest, Reference, RegistryClient};
use futures::{StreamExt as _, TryStreamExt as _};
use tokio_util::sync::CancellationToken;

use crate::builder::registry::registry_options;
use crate::cli::PruneArgs;
use crate::outputs::values;
use crate::printer::{Outcome, Printer};
use crate::settings::{Destination, Project, UsageError};

/// Tags asked for per page of a tag list.
const TAG_PAGE: u32 = 100;
/// Tags resolved (manifests fetched) at once.
const PARALLEL_LOOKUPS: usize = 8;

/// Whether `tag` is fastbuild's content tag of `digest`: `fb-` + its first 12 hex digits.
pub fn is_content_tag_of(tag: &str, digest: &Digest) -> bool {
    tag.strip_prefix("fb-")
        .is_some_and(|hex| hex.len() == 12 && digest.hex().starts_with(hex))
}

/// Whether `tag` has the shape of a content tag.
fn looks_like_content_tag(tag: &str) -> bool {
    tag.strip_prefix("fb-").is_some_and(|hex| {
        hex.len() == 12
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Seconds since the epoch of an RFC 3339 time (`2024-05-01T12:00:00.5+02:00`).
pub fn rfc3339_seconds(text: &str) -> Option<i64> {
    let text = text.trim();
    let (date, rest) = text.split_at_checked(10)?;
    let mut ymd = date.split('-').map(str::parse::<i64>);
    let (year, month, day) = (ymd.next()?.ok()?, ymd.next()?.ok()?, ymd.next()?.ok()?);
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let (clock, zone) = rest.split_at_checked(8)?;
    let mut hms = clock.split(':').map(str::parse::<i64>);
    let (hour, minute, second) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    let zone = match zone.strip_prefix('.') {
        Some(fraction) => fraction.trim_start_matches(|c: char| c.is_ascii_digit()),
        None => zone,
    };
    let offset = match zone {
        "Z" | "z" => 0,
        other => {
            let sign = match other.get(..1)? {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            let (hours, minutes) = other.get(1..)?.split_once(':')?;
            sign * (hours.parse::<i64>().ok()? * 3600 + minutes.parse::<i64>().ok()? * 60)
        }
    };
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// When the project's history (`crate::history`) last recorded each digest of `service`
/// (seconds, and the record's position: a later record wins a tie). Lines that are not records
/// are skipped with a warning.
fn history_times(root: &Path, service: &str, printer: &Printer) -> BTreeMap<Digest, (u64, usize)> {
    let (records, warnings) = match crate::history::Journal::new(root).read() {
        Ok(r) => r,
        Err(e) => {
            printer.warn(&format!(
                "cannot read the history ({e:#}); ordering by creation time"
            ));
            return BTreeMap::new();
        }
    };
    for w in warnings {
        printer.warn(&w);
    }
    records
        .into_iter()
        .enumerate()
        .filter(|(_, r)| r.service == service)
        .map(|(n, r)| (r.digest, (r.time, n)))
        .collect()
}

/// Every digest a values file pins, with the first file naming it: the project's values files
/// and its services' Helm values files (when they exist), and `extra` (which must).
fn pinned_digests(
    project: &Project,
    args: &PruneArgs,
    selected: &[String],
) -> Result<BTreeMap<String, PathBuf>> {
    let mut files: Vec<(PathBuf, bool)> = Vec::new();
    let mut names: BTreeSet<String> = project.config.services.keys().cloned().collect();
    names.extend(selected.iter().cloned());
    for name in &names {
        let plan = project.plan(name, &args.service_flags)?;
        files.push((plan.values_file.clone(), false));
        if let Some(helm) = &plan.helm {
            files.extend(helm.values.iter().map(|p| (p.clone(), false)));
        }
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    files.extend(
        args.values
            .iter()
            .map(|p| (crate::settings::absolutize(&cwd, p), true)),
    );
    let mut pins = BTreeMap::new();
    for (path, required) in files {
        let text = match fs_err::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
            Err(e) => {
                return Err(e).context(format!(
                    "cannot read values file `{}`; prune needs every pinned digest known",
                    path.display()
                ));
            }
        };
        let parsed = values::parse(&text).map_err(|e| {
            anyhow!(
                "values file `{}` is not valid YAML ({e}), so what it pins is unknown; fix it \
                 before pruning",
                path.display()
            )
        })?;
        for digest in values::digests_in(&parsed) {
            pins.entry(digest).or_insert_with(|| path.clone());
        }
    }
    Ok(pins)
}

/// The newest `created` of the image's config(s); `None` when there is none to read.
async fn created(
    client: &RegistryClient,
    repo: &Reference,
    top: &FetchedManifest,
) -> Result<Option<i64>> {
    let v: serde_json::Value = serde_json::from_slice(&top.bytes)
        .with_context(|| format!("the manifest `{repo}@{}` is not JSON", top.digest))?;
    let mut manifests = Vec::new();
    if let Some(list) = v["manifests"].as_array() {
        for d in list {
            let Some(digest) = d["digest"].as_str().and_then(|d| d.parse::<Digest>().ok()) else {
                continue;
            };
            let child = client.get_manifest(&repo.with_digest(digest)).await?;
            manifests.push(serde_json::from_slice::<serde_json::Value>(&child.bytes)?);
        }
    } else {
        manifests.push(v);
    }
    let mut newest = None;
    for m in manifests {
        let Some(config) = m["config"]["digest"]
            .as_str()
            .and_then(|d| d.parse::<Digest>().ok())
        else {
            continue;
        };
        let bytes = client.get_blob(repo, &config).await?;
        let config: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if let Some(t) = config["created"].as_str().and_then(rfc3339_seconds) {
            newest = newest.max(Some(t));
        }
    }
    Ok(newest)
}

/// One digest of a repository and what decides its fate.
#[derive(Debug)]
struct Image {
    digest: Digest,
    tags: Vec<String>,
    /// Seconds: the history's record time, else the config's `created`.
    time: Option<i64>,
    /// The history record's position (later = newer within one second); 0 without history.
    seq: usize,
    from_history: bool,
}

/// Why a digest stays.
#[derive(Debug, PartialEq, Eq)]
enum Keep {
    Newest,
    Tied,
    Pinned(PathBuf),
    OtherTag(String),
    NoTime,
}

/// Splits `images` (fastbuild-tagged) into kept (with why) and deleted, newest first.
fn decide(
    images: Vec<Image>,
    keep: usize,
    pins: &BTreeMap<String, PathBuf>,
) -> (Vec<(Image, Keep)>, Vec<Image>) {
    let mut images = images;
    // Newest first: history-recorded digests by record time, then by `created`.
    images.sort_by(|a, b| {
        (b.time, b.seq)
            .cmp(&(a.time, a.seq))
            .then(b.digest.cmp(&a.digest))
    });
    let timed: Vec<(i64, usize)> = images
        .iter()
        .filter_map(|i| i.time.map(|t| (t, i.seq)))
        .collect();
    let cutoff = (keep > 0)
        .then(|| timed.get(keep - 1).or(timed.last()).copied())
        .flatten();
    let mut kept = Vec::new();
    let mut gone = Vec::new();
    let mut newest = 0;
    for image in images {
        let why = if let Some(file) = pins.get(&image.digest.to_string()) {
            Some(Keep::Pinned(file.clone()))
        } else if let Some(t) = image
            .tags
            .iter()
            .find(|t| !is_content_tag_of(t, &image.digest))
        {
            Some(Keep::OtherTag(t.clone()))
        } else {
            match (image.time, cutoff) {
                (None, _) => Some(Keep::NoTime),
                (Some(_), _) if newest < keep => Some(Keep::Newest),
                (Some(t), Some(c)) if (t, image.seq) >= c => Some(Keep::Tied),
                _ => None,
            }
        };
        if image.time.is_some() {
            newest += 1;
        }
        match why {
            Some(why) => kept.push((image, why)),
            None => gone.push(image),
        }
    }
    (kept, gone)
}

/// `fastbuild prune`.
pub async fn run(
    project: &Project,
    args: &PruneArgs,
    printer: &Printer,
    cancel: &CancellationToken,
) -> Result<()> {
    let names = project.select(&args.services, &args.service_flags)?;
    let pins = pinned_digests(project, args, &names)?;
    let mut deleted_any = false;
    for name in &names {
        let plan = project.plan(name, &args.service_flags)?;
        let Destination::Registry { repository, .. } = &plan.registry.destination else {
            if args.services.is_empty() {
                printer.note(Some(name), "no registry: nothing to prune");
                continue;
            }
            return Err(crate::settings::no_registry(name));
        };
        let repo: Reference = repository
            .parse()
            .map_err(|e| anyhow!(UsageError(format!("service `{name}`: {e}"))))?;
        let client = RegistryClient::new(registry_options(&plan))
            .context("cannot set up the registry client")?;
        let work = prune_one(&client, &repo, name, args, &pins, project, printer);
        deleted_any |= tokio::select! {
            r = work => r.with_context(|| format!("failed to prune `{repository}` (service `{name}`)"))?,
            () = cancel.cancelled() => return Err(anyhow!(crate::Interrupted)),
        };
    }
    if deleted_any {
        printer.note(
            None,
            "the registry frees the space when its garbage collector runs (distribution: \
             `registry garbage-collect CONFIG`)",
        );
    }
    Ok(())
}

/// Prunes one repository; whether anything was deleted.
async fn prune_one(
    client: &RegistryClient,
    repo: &Reference,
    name: &str,
    args: &PruneArgs,
    pins: &BTreeMap<String, PathBuf>,
    project: &Project,
    printer: &Printer,
) -> Result<bool> {
    let tags = client.list_tags(repo, Some(TAG_PAGE)).await?;
    // Every tag is resolved: a digest that another tag names too is not fastbuild's to delete.
    // A tag deleted meanwhile (another prune, a person) is passed over.
    let resolved: Vec<Option<(String, FetchedManifest)>> = futures::stream::iter(tags)
        .map(|tag| async move {
            match client.get_manifest(&repo.with_tag(tag.clone())).await {
                Ok(m) => Ok(Some((tag, m))),
                Err(fastbuild_oci::Error::Status { status: 404, .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .buffer_unordered(PARALLEL_LOOKUPS)
        .try_collect()
        .await?;
    let mut by_digest: BTreeMap<Digest, (Vec<String>, FetchedManifest)> = BTreeMap::new();
    for (tag, m) in resolved.into_iter().flatten() {
        by_digest
            .entry(m.digest.clone())
            .or_insert_with(|| (Vec::new(), m))
            .0
            .push(tag);
    }
    let history = history_times(&project.root, name, printer);
    let mut images = Vec::new();
    for (digest, (mut tags, manifest)) in by_digest {
        tags.sort();
        if !tags.iter().any(|t| is_content_tag_of(t, &digest)) {
            if let Some(t) = tags.iter().find(|t| looks_like_content_tag(t)) {
                tracing::debug!(tag = t, %digest, "an `fb-` tag of another digest: not fastbuild's");
            }
            continue;
        }
        let (time, seq, from_history) = match history.get(&digest) {
            Some((t, n)) => (Some(*t as i64), *n, true),
            None => (created(client, repo, &manifest).await?, 0, false),
        };
        images.push(Image {
            digest,
            tags,
            time,
            seq,
            from_history,
        });
    }
    if images.is_empty() {
        printer.note(
            Some(name),
            format!("{}: no fastbuild images", repo.repository_name()),
        );
        return Ok(false);
    }
    let total = images.len();
    let (kept, gone) = decide(images, args.keep, pins);
    for (image, why) in &kept {
        let why = match why {
            Keep::Newest => format!(
                "among the {} newest{}",
                args.keep,
                if image.from_history { " (history)" } else { "" }
            ),
            Keep::Tied => "created at the same time as the oldest kept one".to_owned(),
            Keep::Pinned(file) => format!("pinned by {}", file.display()),
            Keep::OtherTag(t) => format!("also tagged `{t}`"),
            Keep::NoTime => "no creation time to order it by".to_owned(),
        };
        printer.note(
            Some(name),
            format!("keep {}@{}: {why}", repo.repository_name(), image.digest),
        );
    }
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    for image in &gone {
        let pinned = repo.with_digest(image.digest.clone());
        if !args.dry_run {
            client.delete_manifest(&pinned).await?;
        }
        printer.result(Outcome::Pruned {
            service: name,
            dry_run: args.dry_run,
            reference: &pinned,
            tags: &image.tags,
        });
        if printer.is_json() {
            printer.json(&serde_json::json!({
                "event": "pruned", "service": name, "reference": pinned.to_string(),
                "digest": image.digest.to_string(), "tags": image.tags, "dry_run": args.dry_run,
            }));
        }
    }
    printer.note(
        Some(name),
        format!(
            "{}: {total} fastbuild image(s), {} kept, {} {verb}",
            repo.repository_name(),
            kept.len(),
            gone.len()
        ),
    );
    Ok(!args.dry_run && !gone.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    fn image(c: char, time: Option<i64>) -> Image {
        let d = digest(c);
        Image {
            tags: vec![format!("fb-{}", &d.hex()[..12])],
            digest: d,
            time,
            seq: 0,
            from_history: false,
        }
    }

    fn names(images: &[Image]) -> String {
        images.iter().map(|i| &i.digest.hex()[..1]).collect()
    }

    #[test]
    fn content_tags_name_their_digest() {
        let d = digest('a');
        assert!(is_content_tag_of("fb-aaaaaaaaaaaa", &d));
        assert!(!is_content_tag_of("fb-bbbbbbbbbbbb", &d));
        assert!(!is_content_tag_of("fb-aaaaaaaaaaa", &d));
        assert!(!is_content_tag_of("latest", &d));
        assert!(looks_like_content_tag("fb-0123456789ab"));
        assert!(!looks_like_content_tag("fb-0123456789AB"));
    }

    #[test]
    fn the_newest_pinned_and_otherwise_tagged_stay() {
        let pins: BTreeMap<String, PathBuf> =
            [(digest('a').to_string(), PathBuf::from("prod.yaml"))].into();
        let mut tagged = image('b', Some(2));
        tagged.tags.push("release".into());
        let images = vec![
            image('a', Some(1)),
            tagged,
            image('c', Some(3)),
            image('d', Some(4)),
            image('e', Some(5)),
            image('f', None),
        ];
        let (kept, gone) = decide(images, 2, &pins);
        let why: Vec<(char, &Keep)> = kept
            .iter()
            .map(|(i, k)| (i.digest.hex().chars().next().unwrap(), k))
            .collect();
        assert_eq!(
            why,
            [
                ('e', &Keep::Newest),
                ('d', &Keep::Newest),
                ('b', &Keep::OtherTag("release".into())),
                ('a', &Keep::Pinned("prod.yaml".into())),
                ('f', &Keep::NoTime),
            ]
        );
        assert_eq!(names(&gone), "c");
    }

    /// Builds recorded in the history within one second are ordered by their records.
    #[test]
    fn history_order_breaks_ties_of_one_second() {
        let mut older = image('a', Some(7));
        older.seq = 1;
        let mut newer = image('b', Some(7));
        newer.seq = 2;
        let (kept, gone) = decide(vec![older, newer], 1, &BTreeMap::new());
        assert_eq!(kept.len(), 1);
        assert_eq!(names(&gone), "a");
    }

    #[test]
    fn ties_at_the_cutoff_are_all_kept() {
        let images = vec![
            image('a', Some(7)),
            image('b', Some(7)),
            image('c', Some(7)),
        ];
        let (kept, gone) = decide(images, 1, &BTreeMap::new());
        assert_eq!(kept.len(), 3);
        assert!(gone.is_empty());
        let images = vec![
            image('a', Some(1)),
            image('b', Some(7)),
            image('c', Some(7)),
        ];
        let (_, gone) = decide(images, 1, &BTreeMap::new());
        assert_eq!(names(&gone), "a");
        let images = vec![image('a', Some(1)), image('b', Some(7))];
        let (kept, gone) = decide(images, 0, &BTreeMap::new());
        assert!(kept.is_empty());
        assert_eq!(names(&gone), "ba");
    }

    #[test]
    fn rfc3339_times_parse_with_fractions_and_offsets() {
        assert_eq!(rfc3339_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339_seconds("2024-02-29T12:30:15Z"), Some(1_709_209_815));
        assert_eq!(
            rfc3339_seconds("2024-02-29T14:30:15.123456789+02:00"),
            Some(1_709_209_815)
        );
        assert_eq!(rfc3339_seconds("1969-12-31T23:59:59Z"), Some(-1));
        assert_eq!(rfc3339_seconds("2024-13-01T00:00:00Z"), None);
        assert_eq!(rfc3339_seconds("yesterday"), None);
    }
}
