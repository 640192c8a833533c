//! Docker-style path patterns (`.dockerignore`, include/exclude filters of file sync), with the
//! exact semantics of `moby/patternmatcher` v0.6.1 as built by Go 1.26 (what buildctl v0.32.2
//! runs).
//!
//! How a pattern is read (patternmatcher.go `New`, `compile`, `match`):
//! - it is `TrimSpace`d and `filepath.Clean`ed (the `!` included: `!a/../b` is `b`, no
//!   exception); a leading `!` then marks an exception; `filepath.Match(p, ".")` must not fail
//!   (that is the only syntax check when the matcher is built — Go 1.26's `Match` stops at the
//!   first chunk that does not match `.`, so later chunks are not checked);
//! - without `*`, `?`, `[`, `]` or `\` it is an exact path; `dir/**` is a byte prefix (`dir/`);
//!   `**` first (and nothing special after) is a byte suffix, e.g. `**/x` matches `x` and
//!   `*/x`… and `**x` matches `ax`;
//! - otherwise it is translated to a Go regular expression `^…$` — `*` → `[^/]*`, `?` → `[^/]`,
//!   `**/` → `(.*/)?`, `.+()$` escaped, `\c` → `\c` (so `\d` is a digit class, `\Q` quotes),
//!   `[`, `]` and everything else copied, including `|`, `{` and `}` (patternmatcher means to
//!   escape them, but its bitmap drops bytes ≥ 64: `a*|b` matches `b`, `a?{2}` counts) — and
//!   Go's regexp decides; an expression Go rejects makes every evaluation of that pattern fail
//!   ([`MatchError`]), not the construction.
//!
//! Paths and patterns are bytes (Linux names need not be UTF-8); in regexp patterns every
//! invalid byte is one `U+FFFD`, for the pattern and for the path, as in Go.
//!
//! Matching is linear in the path length for a given pattern (see [`goregexp`]); patterns are
//! limited to [`MAX_PATTERN_LEN`] bytes and [`MAX_PATTERNS`] per matcher.

mod gopath;
mod goregexp;

pub use gopath::{BadPattern, clean_path, clean_path_bytes, glob_match, trim_space};

use std::borrow::Cow;
use std::fmt;

use goregexp::{Program, SyntaxError, decode_rune};

/// Longest accepted pattern, in bytes (Linux's `PATH_MAX`: a longer pattern is a mistake).
pub const MAX_PATTERN_LEN: usize = 4096;
/// Most patterns in one matcher.
pub const MAX_PATTERNS: usize = 100_000;

/// A pattern list that could not be parsed (Go's `New` errors, plus our size limits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// `!` alone is not a pattern.
    #[error("illegal exclusion pattern: \"!\"")]
    LoneExclamation,
    /// `filepath.Match` rejects the pattern (e.g. `[`, `[]a]`, `[a-b-c]`, a trailing `\`).
    #[error("syntax error in pattern `{0}`: check `[...]` classes and `\\` escapes")]
    Syntax(String),
    /// Longer than [`MAX_PATTERN_LEN`].
    #[error(
        "pattern of {len} bytes starting with `{start}` is longer than the limit of {MAX_PATTERN_LEN} bytes"
    )]
    TooLong {
        /// Its length.
        len: usize,
        /// Its first characters.
        start: String,
    },
    /// More than [`MAX_PATTERNS`].
    #[error("{0} patterns are more than the limit of {MAX_PATTERNS}")]
    TooMany(usize),
    /// Its expression needs more than fastbuild's limit of instructions (counted repetitions
    /// such as `?{1000}`; Go would accept up to its own, larger limit).
    #[error(
        "pattern `{0}` is too complex: its expression needs more than {max} instructions",
        max = goregexp::MAX_INSTS
    )]
    TooComplex(String),
}

/// A pattern that Go's regexp package would not compile: evaluating it fails (Go returns
/// `filepath.ErrBadPattern` from every match call that reaches it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("syntax error in pattern `{pattern}`: {reason}")]
pub struct MatchError {
    /// The pattern (lossy UTF-8).
    pub pattern: String,
    /// Go's regexp error.
    pub reason: String,
}

#[derive(Clone, PartialEq, Eq)]
enum Kind {
    Exact,
    /// The pattern without its trailing `**`.
    Prefix,
    /// The pattern without its leading `**`.
    Suffix,
    Regexp {
        /// Go's expression, `^…$`.
        source: String,
        program: Result<Program, String>,
    },
}

/// One parsed pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    /// `cleanedPattern`: cleaned, without the `!`.
    cleaned: Vec<u8>,
    exclusion: bool,
    kind: Kind,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}",
            if self.exclusion { "!" } else { "" },
            String::from_utf8_lossy(&self.cleaned)
        )
    }
}

impl Pattern {
    /// The cleaned pattern, without the `!` (Go's `Pattern.String`).
    pub fn as_bytes(&self) -> &[u8] {
        &self.cleaned
    }

    /// The cleaned pattern as text (lossy for non-UTF-8 bytes).
    pub fn as_str_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.cleaned)
    }

    /// Whether this is a `!` exception.
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    /// Whether the pattern matches exactly `path` (Go's `Pattern.match`: no parent logic).
    pub fn matches_path(&self, path: &[u8]) -> Result<bool, MatchError> {
        self.matches_counting(path, &mut 0)
    }

    fn matches_counting(&self, path: &[u8], steps: &mut u64) -> Result<bool, MatchError> {
        let p = &self.cleaned;
        Ok(match &self.kind {
            Kind::Exact => path == p.as_slice(),
            Kind::Prefix => path.starts_with(&p[..p.len() - 2]),
            Kind::Suffix => {
                let suffix = &p[2..];
                path.ends_with(suffix) || (suffix.first() == Some(&b'/') && path == &suffix[1..])
            }
            Kind::Regexp {
                program: Ok(program),
                ..
            } => program.is_match(path, steps),
            Kind::Regexp {
                program: Err(reason),
                ..
            } => {
                return Err(MatchError {
                    pattern: self.as_str_lossy().into_owned(),
                    reason: reason.clone(),
                });
            }
        })
    }
}

/// Splits a pattern into runes as Go's `text/scanner` reads it: invalid bytes are `U+FFFD`
/// each, and a byte order mark at the very start is skipped.
fn scanner_runes(s: &[u8]) -> Vec<char> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let (r, n) = decode_rune(&s[i..]);
        if !(i == 0 && r == '\u{FEFF}') {
            out.push(r);
        }
        i += n;
    }
    out
}

/// patternmatcher's `shouldEscape` as it really behaves: it means `.+()|{}$`, but its 8-byte
/// bitmap keeps bit `b/8` of byte `b%8`, and the bits of `|` `{` `}` (≥ 64) fall off a byte.
fn should_escape(c: char) -> bool {
    matches!(c, '.' | '+' | '(' | ')' | '$')
}

/// patternmatcher's `compile`: the match kind, and for regexps Go's expression (`Err` only
/// when the expression is over fastbuild's size limit).
fn compile(cleaned: &[u8]) -> Result<Kind, ()> {
    #[derive(PartialEq, Clone, Copy)]
    enum Detected {
        Exact,
        Prefix,
        Suffix,
        Regexp,
    }
    let runes = scanner_runes(cleaned);
    let mut re = String::from("^");
    let mut detected = Detected::Exact;
    let mut pos = 0;
    let mut i = 0;
    while pos < runes.len() {
        let ch = runes[pos];
        pos += 1;
        if ch == '*' {
            if runes.get(pos) == Some(&'*') {
                pos += 1;
                if runes.get(pos) == Some(&'/') {
                    pos += 1;
                }
                if pos == runes.len() {
                    if detected == Detected::Exact {
                        detected = Detected::Prefix;
                    } else {
                        re.push_str(".*");
                        detected = Detected::Regexp;
                    }
                } else {
                    re.push_str("(.*/)?");
                    detected = Detected::Regexp;
                }
                if i == 0 {
                    detected = Detected::Suffix;
                }
            } else {
                re.push_str("[^/]*");
                detected = Detected::Regexp;
            }
        } else if ch == '?' {
            re.push_str("[^/]");
            detected = Detected::Regexp;
        } else if should_escape(ch) {
            re.push('\\');
            re.push(ch);
        } else if ch == '\\' {
            if let Some(&next) = runes.get(pos) {
                pos += 1;
                re.push('\\');
                re.push(next);
                detected = Detected::Regexp;
            } else {
                re.push('\\');
            }
        } else if ch == '[' || ch == ']' {
            re.push(ch);
            detected = Detected::Regexp;
        } else {
            re.push(ch);
        }
        i += 1;
    }
    Ok(match detected {
        Detected::Exact => Kind::Exact,
        Detected::Prefix => Kind::Prefix,
        Detected::Suffix => Kind::Suffix,
        Detected::Regexp => {
            re.push('$');
            let program = match Program::new(&re) {
                Ok(program) => Ok(program),
                Err(SyntaxError::Go(reason)) => Err(reason),
                Err(SyntaxError::TooLarge) => return Err(()),
            };
            Kind::Regexp {
                source: re,
                program,
            }
        }
    })
}

/// Parent-directory match results of one path, passed down to its children
/// (patternmatcher's `MatchInfo`). The default value means "no information".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchInfo {
    parent_matched: Vec<bool>,
}

/// An ordered list of patterns where the last applicable one wins.
#[derive(Debug, Clone, Default)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

impl PatternMatcher {
    /// Parses the patterns as Go's `patternmatcher.New`; empty (after trimming) ones are
    /// skipped.
    pub fn new<I, S>(patterns: I) -> Result<Self, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let mut out = Vec::new();
        let mut exclusions = false;
        for raw in patterns {
            let p = trim_space(raw.as_ref());
            if p.is_empty() {
                continue;
            }
            if p.len() > MAX_PATTERN_LEN {
                let start = String::from_utf8_lossy(&p[..64]).into_owned();
                return Err(PatternError::TooLong {
                    len: p.len(),
                    start,
                });
            }
            if out.len() == MAX_PATTERNS {
                return Err(PatternError::TooMany(MAX_PATTERNS + 1));
            }
            let mut cleaned = clean_path_bytes(p);
            let mut exclusion = false;
            if cleaned[0] == b'!' {
                if cleaned.len() == 1 {
                    return Err(PatternError::LoneExclamation);
                }
                cleaned.remove(0);
                exclusion = true;
                exclusions = true;
            }
            if glob_match(&cleaned, b".").is_err() {
                return Err(PatternError::Syntax(
                    String::from_utf8_lossy(&cleaned).into_owned(),
                ));
            }
            let kind = compile(&cleaned).map_err(|()| {
                PatternError::TooComplex(String::from_utf8_lossy(&cleaned).into_owned())
            })?;
            out.push(Pattern {
                cleaned,
                exclusion,
                kind,
            });
        }
        Ok(Self {
            patterns: out,
            exclusions,
        })
    }

    /// The parsed patterns, in order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether any pattern is a `!` exception (Go's `Exclusions`).
    pub fn has_exclusions(&self) -> bool {
        self.exclusions
    }

    /// Whether there are no patterns at all.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Go's `MatchesOrParentMatches`: whether `path` or one of its parent directories matches,
    /// exceptions applied. Used by fsutil when a file is opened.
    pub fn matches_or_parent_matches(&self, path: &[u8]) -> Result<bool, MatchError> {
        let parent = dir(path);
        let mut matched = false;
        for pattern in &self.patterns {
            // An inclusion cannot change a match, an exception cannot change a non-match.
            if pattern.exclusion != matched {
                continue;
            }
            let mut hit = pattern.matches_path(path)?;
            if !hit && parent != b"." {
                hit = parent_prefixes(&parent).any(|p| pattern.matches_path(p).unwrap_or(false));
            }
            if hit {
                matched = !pattern.exclusion;
            }
        }
        Ok(matched)
    }

    /// Go's `MatchesUsingParentResults`, as fsutil's walker calls it once per directory level:
    /// a pattern that matched the parent counts as matching without being evaluated; one that
    /// was skipped at the parent (an exception while nothing matched yet, or an inclusion after
    /// a match) counts as not matching there. So with `**/*.md` then `!docs`, `docs/a.md` is
    /// excluded: `!docs` was skipped for `docs` and does not match `docs/a.md` itself.
    /// With the default `parent` (no information) parents are checked as in
    /// [`matches_or_parent_matches`](Self::matches_or_parent_matches).
    pub fn matches_using_parent_results(
        &self,
        path: &[u8],
        parent: &MatchInfo,
    ) -> Result<(bool, MatchInfo), MatchError> {
        self.using_parent_results(path, parent, &mut 0)
    }

    fn using_parent_results(
        &self,
        path: &[u8],
        parent: &MatchInfo,
        steps: &mut u64,
    ) -> Result<(bool, MatchInfo), MatchError> {
        let parent_matched = &parent.parent_matched;
        if !parent_matched.is_empty() && parent_matched.len() != self.patterns.len() {
            return Err(MatchError {
                pattern: String::new(),
                reason: "wrong number of values in parentMatched".into(),
            });
        }
        let mut matched = false;
        let mut info = vec![false; self.patterns.len()];
        for (i, pattern) in self.patterns.iter().enumerate() {
            let mut hit = parent_matched.get(i).copied().unwrap_or(false);
            if !hit {
                if pattern.exclusion != matched {
                    continue;
                }
                hit = pattern.matches_counting(path, steps)?;
                if !hit && parent_matched.is_empty() {
                    let parent_dir = dir(path);
                    if parent_dir != b"." {
                        hit = parent_prefixes(&parent_dir)
                            .any(|p| pattern.matches_path(p).unwrap_or(false));
                    }
                }
            }
            info[i] = hit;
            if hit {
                matched = !pattern.exclusion;
            }
        }
        Ok((
            matched,
            MatchInfo {
                parent_matched: info,
            },
        ))
    }

    /// Whether fsutil's walker would leave `path` (slash-separated, relative) out because of
    /// these (exclude) patterns: each directory level evaluated with its parent's results.
    /// A pattern Go cannot compile makes the walk fail; this answers `false` then (nothing
    /// can be said to be excluded).
    pub fn matches(&self, path: impl AsRef<[u8]>) -> bool {
        let path = path.as_ref();
        let mut info = MatchInfo::default();
        let mut end = 0;
        loop {
            let next = path[end..].iter().position(|&b| b == b'/');
            let level_end = next.map_or(path.len(), |n| end + n);
            let Ok((matched, level_info)) =
                self.matches_using_parent_results(&path[..level_end], &info)
            else {
                return false;
            };
            match next {
                Some(_) => {
                    end = level_end + 1;
                    info = level_info;
                }
                None => return matched,
            }
        }
    }
}

/// The cumulative prefixes `a`, `a/b`, … of a cleaned directory path (Go splits it on `/` and
/// joins `dirs[:i+1]`).
fn parent_prefixes(parent: &[u8]) -> impl Iterator<Item = &[u8]> {
    parent
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'/')
        .map(|(i, _)| &parent[..i])
        .chain(std::iter::once(parent))
}

/// Go's `filepath.Dir` for slash-separated paths.
fn dir(path: &[u8]) -> Vec<u8> {
    let end = path.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
    clean_path_bytes(&path[..end])
}

/// Parses `.dockerignore` content into patterns as BuildKit's frontend does (patternmatcher's
/// `ignorefile.ReadAll`): a UTF-8 BOM is stripped from the first line, lines starting with `#`
/// are comments (before trimming), lines are trimmed and `Clean`ed, a leading `/` is dropped,
/// and a leading `!` is kept.
pub fn parse_dockerignore_bytes(content: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let content = content.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(content);
    let mut lines: Vec<&[u8]> = content.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.starts_with(b"#") {
            continue;
        }
        let mut pattern = trim_space(line);
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern[0] == b'!';
        if invert {
            pattern = trim_space(&pattern[1..]);
        }
        let mut cleaned = Vec::new();
        if !pattern.is_empty() {
            cleaned = clean_path_bytes(pattern);
            if cleaned.len() > 1 && cleaned[0] == b'/' {
                cleaned.remove(0);
            }
        }
        if invert {
            cleaned.insert(0, b'!');
        }
        out.push(cleaned);
    }
    out
}

/// [`parse_dockerignore_bytes`] for text.
pub fn parse_dockerignore(content: &str) -> Vec<String> {
    parse_dockerignore_bytes(content.as_bytes())
        .into_iter()
        .map(|p| String::from_utf8(p).expect("parsing keeps UTF-8"))
        .collect()
}

#[cfg(test)]
mod tests;
