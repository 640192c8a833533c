//! Build progress: `Control.Status` updates merged per vertex and turned into [`ProgressEvent`]s.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use crate::proto::moby::buildkit::v1::StatusResponse;

/// Lines of log kept per vertex for error reports.
const LOG_TAIL: usize = 20;

/// Which output stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One progress update of a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressEvent {
    /// A step started.
    VertexStarted {
        /// Vertex digest (stable ID of the step).
        digest: String,
        /// Step name, e.g. `[2/3] RUN make`.
        name: String,
    },
    /// A step finished successfully (ran).
    VertexCompleted {
        /// Vertex digest.
        digest: String,
        /// Step name.
        name: String,
        /// How long it ran, when known.
        duration: Option<Duration>,
    },
    /// A step was satisfied from the cache.
    VertexCached {
        /// Vertex digest.
        digest: String,
        /// Step name.
        name: String,
    },
    /// A step failed.
    VertexError {
        /// Vertex digest.
        digest: String,
        /// Step name.
        name: String,
        /// BuildKit's error text.
        error: String,
        /// How long it ran, when known.
        duration: Option<Duration>,
    },
    /// Progress of a sub-task of a step (layer pull/push, context transfer).
    Status {
        /// Step name.
        vertex_name: String,
        /// Sub-task ID, e.g. `pushing layers` or a layer digest.
        id: String,
        /// Units done.
        current: i64,
        /// Units in total (0 when unknown).
        total: i64,
        /// Whether the sub-task is finished.
        completed: bool,
    },
    /// Output of a step.
    Log {
        /// Vertex digest.
        digest: String,
        /// Step name.
        vertex_name: String,
        /// stdout or stderr.
        stream: LogStream,
        /// The bytes printed (may span or split lines).
        data: Vec<u8>,
    },
    /// A warning (e.g. a Dockerfile lint).
    Warning {
        /// Step name (may be empty).
        vertex_name: String,
        /// Short text.
        message: String,
        /// Documentation link, when given.
        url: Option<String>,
    },
}

#[derive(Debug, Default)]
struct VertexState {
    name: String,
    started: Option<SystemTime>,
    started_sent: bool,
    done_sent: bool,
    error: Option<String>,
    log: VecDeque<String>,
    partial: String,
}

/// Merges status updates by vertex digest and remembers what error reports need.
#[derive(Debug, Default)]
pub(crate) struct StatusTracker {
    vertices: HashMap<String, VertexState>,
    status_done: BTreeMap<(String, String), bool>,
    /// Digests in the order they failed.
    pub(crate) failed: Vec<String>,
}

/// A daemon timestamp as a `SystemTime`; `None` for one that is negative, has out-of-range
/// nanoseconds or does not fit (a hostile daemon must not be able to panic the client).
fn to_system_time(ts: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    let ts = ts?;
    let secs = u64::try_from(ts.seconds).ok()?;
    let nanos = u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

impl StatusTracker {
    /// The name of the vertex `digest` (empty while the daemon has not named it).
    fn vertex_name(&self, digest: &str) -> String {
        self.vertices
            .get(digest)
            .map(|v| v.name.clone())
            .unwrap_or_default()
    }

    /// Applies one update and returns the events it produces.
    pub(crate) fn apply(&mut self, update: StatusResponse) -> Vec<ProgressEvent> {
        let mut events = Vec::new();
        for v in update.vertexes {
            let state = self.vertices.entry(v.digest.clone()).or_default();
            if !v.name.is_empty() {
                state.name.clone_from(&v.name);
            }
            let started = to_system_time(v.started.as_ref());
            if started.is_some() {
                state.started = started;
            }
            if state.started.is_some() && !state.started_sent && !v.cached {
                state.started_sent = true;
                events.push(ProgressEvent::VertexStarted {
                    digest: v.digest.clone(),
                    name: state.name.clone(),
                });
            }
            let completed = to_system_time(v.completed.as_ref());
            if state.done_sent {
                continue;
            }
            let duration = match (state.started, completed) {
                (Some(s), Some(c)) => c.duration_since(s).ok(),
                _ => None,
            };
            if !v.error.is_empty() {
                state.done_sent = true;
                state.error = Some(v.error.clone());
                self.failed.push(v.digest.clone());
                events.push(ProgressEvent::VertexError {
                    digest: v.digest,
                    name: state.name.clone(),
                    error: v.error,
                    duration,
                });
            } else if v.cached && (completed.is_some() || started.is_none()) {
                state.done_sent = true;
                events.push(ProgressEvent::VertexCached {
                    digest: v.digest,
                    name: state.name.clone(),
                });
            } else if completed.is_some() {
                state.done_sent = true;
                events.push(ProgressEvent::VertexCompleted {
                    digest: v.digest,
                    name: state.name.clone(),
                    duration,
                });
            }
        }
        for s in update.statuses {
            let completed = s.completed.is_some();
            let key = (s.vertex.clone(), s.id.clone());
            if self.status_done.get(&key) == Some(&true) {
                continue;
            }
            self.status_done.insert(key, completed);
            events.push(ProgressEvent::Status {
                vertex_name: self.vertex_name(&s.vertex),
                id: s.id,
                current: s.current,
                total: s.total,
                completed,
            });
        }
        for log in update.logs {
            let state = self.vertices.entry(log.vertex.clone()).or_default();
            state.partial.push_str(&String::from_utf8_lossy(&log.msg));
            while let Some(pos) = state.partial.find('\n') {
                let line: String = state.partial.drain(..=pos).collect();
                state
                    .log
                    .push_back(line.trim_end_matches(['\n', '\r']).to_owned());
                if state.log.len() > LOG_TAIL {
                    state.log.pop_front();
                }
            }
            events.push(ProgressEvent::Log {
                digest: log.vertex,
                vertex_name: state.name.clone(),
                stream: if log.stream == 2 {
                    LogStream::Stderr
                } else {
                    LogStream::Stdout
                },
                data: log.msg,
            });
        }
        for w in update.warnings {
            events.push(ProgressEvent::Warning {
                vertex_name: self.vertex_name(&w.vertex),
                message: String::from_utf8_lossy(&w.short).into_owned(),
                url: Some(w.url).filter(|u| !u.is_empty()),
            });
        }
        events
    }

    /// Name, error and last log lines of the first failed vertex.
    pub(crate) fn failure(&self) -> Option<(String, String, Vec<String>)> {
        let digest = self.failed.iter().find(|d| {
            // Prefer the step that really failed over the wrappers that fail with it.
            self.vertices.get(*d).is_some_and(|v| {
                v.error
                    .as_deref()
                    .is_some_and(|e| !e.contains("context canceled"))
            })
        })?;
        let v = self.vertices.get(digest)?;
        let mut log: Vec<String> = v.log.iter().cloned().collect();
        if !v.partial.trim().is_empty() {
            log.push(v.partial.trim_end().to_owned());
        }
        if log.len() > LOG_TAIL {
            log.drain(..log.len() - LOG_TAIL);
        }
        Some((v.name.clone(), v.error.clone().unwrap_or_default(), log))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::moby::buildkit::v1::{Vertex, VertexLog};

    #[allow(clippy::unnecessary_wraps)] // shaped like the optional proto field
    fn ts(s: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        })
    }

    #[test]
    fn merges_vertex_updates_and_keeps_log_tail() {
        let mut t = StatusTracker::default();
        let v = |started, completed, error: &str| Vertex {
            digest: "sha256:a".into(),
            name: "[2/2] RUN false".into(),
            started,
            completed,
            error: error.into(),
            ..Vertex::default()
        };
        let ev = t.apply(StatusResponse {
            vertexes: vec![v(ts(10), None, "")],
            ..StatusResponse::default()
        });
        assert!(matches!(&ev[..], [ProgressEvent::VertexStarted { .. }]));
        let logs = (0..30)
            .map(|i| VertexLog {
                vertex: "sha256:a".into(),
                stream: 2,
                msg: format!("line {i}\n").into_bytes(),
                ..VertexLog::default()
            })
            .collect();
        t.apply(StatusResponse {
            logs,
            ..StatusResponse::default()
        });
        let ev = t.apply(StatusResponse {
            vertexes: vec![v(ts(10), ts(13), "exit code: 1")],
            ..StatusResponse::default()
        });
        assert_eq!(
            ev,
            vec![ProgressEvent::VertexError {
                digest: "sha256:a".into(),
                name: "[2/2] RUN false".into(),
                error: "exit code: 1".into(),
                duration: Some(Duration::from_secs(3)),
            }]
        );
        let (name, _, log) = t.failure().unwrap();
        assert_eq!(name, "[2/2] RUN false");
        assert_eq!(log.len(), 20);
        assert_eq!(log.last().unwrap(), "line 29");
        // Repeated updates produce no duplicate events.
        assert!(
            t.apply(StatusResponse {
                vertexes: vec![v(ts(10), ts(13), "exit code: 1")],
                ..StatusResponse::default()
            })
            .is_empty()
        );
    }

    /// Hardening L6: `seconds = i64::MAX` overflowed `SystemTime` (a panic, while the caller
    /// held the tracker's lock).
    #[test]
    fn hostile_timestamps_are_ignored_without_panicking() {
        let mut t = StatusTracker::default();
        let bad = [
            // i64::MAX s plus 2.1 s of "nanoseconds": past what `SystemTime` holds.
            prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: i32::MAX,
            },
            prost_types::Timestamp {
                seconds: 1,
                nanos: i32::MAX,
            },
            prost_types::Timestamp {
                seconds: -5,
                nanos: -1,
            },
        ];
        for (i, b) in bad.into_iter().enumerate() {
            let ev = t.apply(StatusResponse {
                vertexes: vec![Vertex {
                    digest: format!("sha256:{i}"),
                    name: "step".into(),
                    started: Some(b),
                    completed: Some(b),
                    ..Vertex::default()
                }],
                ..StatusResponse::default()
            });
            assert!(ev.is_empty(), "an invalid timestamp was used: {ev:?}");
        }
    }
}
