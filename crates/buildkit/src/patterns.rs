//! Docker-style path patterns (`.dockerignore`, include/exclude filters of file sync).
//!
//! Semantics follow `moby/patternmatcher` v0.6 (the version vendored by BuildKit v0.13 and
//! v0.23): patterns are `Clean`ed, match the **whole** slash-separated relative path (a
//! pattern matching a parent directory matches everything below it), `*` and `?` never match
//! `/`, `**` matches any number of segments (including none), `[...]` is a character class,
//! `\` escapes, a leading `!` marks an exception, and the last matching pattern wins.

use std::fmt;

/// A pattern that could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    /// `!` alone is not a pattern.
    #[error("illegal exclusion pattern `!`: an exception needs a path after the `!`")]
    LoneExclamation,
    /// Unterminated or empty character class, or a trailing escape.
    #[error("syntax error in pattern `{0}`: check `[...]` classes and `\\` escapes")]
    Syntax(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Lit(char),
    /// `*`: any run of characters except `/`.
    Star,
    /// `?`: one character except `/`.
    Quest,
    /// `[...]`: one character (never `/`) in or, when negated, not in the ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `**/` or `**` followed by more pattern: `(.*/)?`.
    AnyDirs,
    /// trailing `**`: `.*`.
    AnyRest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Exact,
    Prefix(String),
    Suffix(String),
    Tokens(Vec<Token>),
}

/// One parsed pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    cleaned: String,
    exclusion: bool,
    kind: Kind,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}",
            if self.exclusion { "!" } else { "" },
            self.cleaned
        )
    }
}

/// True when `s` contains a character that makes a pattern more than a literal path.
pub(crate) fn has_wildcards(s: &str) -> bool {
    s.chars().any(|c| matches!(c, '*' | '?' | '[' | ']' | '\\'))
}

impl Pattern {
    /// Parses one pattern (a leading `!` makes it an exception).
    pub fn new(raw: &str) -> Result<Self, PatternError> {
        let trimmed = raw.trim();
        let cleaned = clean_path(trimmed);
        let (exclusion, body) = match cleaned.strip_prefix('!') {
            Some("") => return Err(PatternError::LoneExclamation),
            Some(rest) => (true, rest.to_owned()),
            None => (false, cleaned),
        };
        // Paths are always relative to the root: a leading `/` could never match otherwise.
        let body = match body.strip_prefix('/') {
            Some(rest) if !rest.is_empty() => rest.to_owned(),
            _ => body,
        };
        let kind = compile(&body)?;
        Ok(Self {
            cleaned: body,
            exclusion,
            kind,
        })
    }

    /// The cleaned pattern text, without the `!`.
    pub fn as_str(&self) -> &str {
        &self.cleaned
    }

    /// Whether this is a `!` exception.
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    /// Whether the pattern matches `path` exactly (no parent-directory logic).
    pub fn matches_exact(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact => path == self.cleaned,
            Kind::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Kind::Suffix(suffix) => {
                path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/').is_some_and(|s| path == s)
            }
            Kind::Tokens(tokens) => {
                let chars: Vec<char> = path.chars().collect();
                match_tokens(tokens, &chars)
            }
        }
    }

    /// Whether the pattern matches `path` or one of its parent directories.
    pub fn matches_or_parent(&self, path: &str) -> bool {
        if self.matches_exact(path) {
            return true;
        }
        let mut end = 0;
        while let Some(pos) = path[end..].find('/') {
            end += pos;
            if self.matches_exact(&path[..end]) {
                return true;
            }
            end += 1;
        }
        false
    }

    /// Conservative check: could this pattern match `dir` itself or something below it?
    pub(crate) fn could_match_under(&self, dir: &str) -> bool {
        if !has_wildcards(&self.cleaned) {
            let pat = format!("{}/", self.cleaned);
            let dir_slash = format!("{dir}/");
            return pat.starts_with(&dir_slash) || dir_slash.starts_with(&pat);
        }
        let pat_segments: Vec<&str> = self.cleaned.split('/').collect();
        for (i, dir_segment) in dir.split('/').enumerate() {
            let Some(pat_segment) = pat_segments.get(i) else {
                // The dir is deeper than the pattern: only reachable through a parent match.
                return true;
            };
            if pat_segment.contains("**") {
                return true;
            }
            let tokens = match compile(pat_segment) {
                Ok(Kind::Tokens(t)) => t,
                Ok(_) => lit_tokens(pat_segment),
                Err(_) => return true,
            };
            let chars: Vec<char> = dir_segment.chars().collect();
            if !match_tokens(&tokens, &chars) {
                return false;
            }
        }
        true
    }
}

fn lit_tokens(s: &str) -> Vec<Token> {
    s.chars().map(Token::Lit).collect()
}

/// Compiles a cleaned pattern body, choosing the match kind the way patternmatcher does.
fn compile(pattern: &str) -> Result<Kind, PatternError> {
    #[derive(PartialEq)]
    enum Mode {
        Exact,
        Prefix,
        Suffix,
        Regexp,
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut mode = Mode::Exact;
    let mut i = 0;
    while i < chars.len() {
        let first = i == 0;
        let ch = chars[i];
        i += 1;
        match ch {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i == chars.len() {
                    if mode == Mode::Exact {
                        mode = Mode::Prefix;
                    } else {
                        mode = Mode::Regexp;
                    }
                    tokens.push(Token::AnyRest);
                } else {
                    tokens.push(Token::AnyDirs);
                    mode = Mode::Regexp;
                }
                if first {
                    mode = Mode::Suffix;
                }
            }
            '*' => {
                tokens.push(Token::Star);
                mode = Mode::Regexp;
            }
            '?' => {
                tokens.push(Token::Quest);
                mode = Mode::Regexp;
            }
            '\\' => match chars.get(i) {
                Some(&next) => {
                    tokens.push(Token::Lit(next));
                    i += 1;
                }
                None => return Err(PatternError::Syntax(pattern.to_owned())),
            },
            '[' => {
                let (token, next) = parse_class(&chars, i)
                    .ok_or_else(|| PatternError::Syntax(pattern.to_owned()))?;
                tokens.push(token);
                i = next;
                mode = Mode::Regexp;
            }
            ']' => return Err(PatternError::Syntax(pattern.to_owned())),
            other => tokens.push(Token::Lit(other)),
        }
    }
    Ok(match mode {
        Mode::Exact => Kind::Exact,
        Mode::Prefix => Kind::Prefix(pattern[..pattern.len() - 2].to_owned()),
        Mode::Suffix => Kind::Suffix(pattern[2..].to_owned()),
        Mode::Regexp => Kind::Tokens(tokens),
    })
}

/// Parses a class starting after `[`; returns the token and the index after `]`.
fn parse_class(chars: &[char], mut i: usize) -> Option<(Token, usize)> {
    let mut negated = false;
    if chars.get(i) == Some(&'^') {
        negated = true;
        i += 1;
    }
    let mut ranges = Vec::new();
    let read_char = |i: &mut usize| -> Option<char> {
        let c = *chars.get(*i)?;
        *i += 1;
        if c == '\\' {
            let e = *chars.get(*i)?;
            *i += 1;
            Some(e)
        } else {
            Some(c)
        }
    };
    loop {
        match chars.get(i) {
            None => return None,
            Some(']') if !ranges.is_empty() => {
                return Some((Token::Class { negated, ranges }, i + 1));
            }
            Some(_) => {
                let lo = read_char(&mut i)?;
                let hi =
                    if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|c| *c != ']') {
                        i += 1;
                        read_char(&mut i)?
                    } else {
                        lo
                    };
                if hi < lo {
                    return None;
                }
                ranges.push((lo, hi));
            }
        }
    }
}

fn match_tokens(tokens: &[Token], path: &[char]) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        return path.is_empty();
    };
    match first {
        Token::Lit(c) => path.first() == Some(c) && match_tokens(rest, &path[1..]),
        Token::Quest => path.first().is_some_and(|c| *c != '/') && match_tokens(rest, &path[1..]),
        Token::Class { negated, ranges } => {
            path.first().is_some_and(|c| {
                *c != '/' && (ranges.iter().any(|(lo, hi)| lo <= c && c <= hi) != *negated)
            }) && match_tokens(rest, &path[1..])
        }
        Token::Star => {
            for n in 0..=path.len() {
                if match_tokens(rest, &path[n..]) {
                    return true;
                }
                if n < path.len() && path[n] == '/' {
                    break;
                }
            }
            false
        }
        Token::AnyRest => true,
        Token::AnyDirs => {
            // `(.*/)?`: nothing, or anything that ends with a `/`.
            if match_tokens(rest, path) {
                return true;
            }
            (0..path.len()).any(|n| path[n] == '/' && match_tokens(rest, &path[n + 1..]))
        }
    }
}

/// An ordered list of patterns where the last applicable one wins.
#[derive(Debug, Clone, Default)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
}

impl PatternMatcher {
    /// Parses the patterns; empty (after trimming) ones are skipped.
    pub fn new<I, S>(patterns: I) -> Result<Self, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let patterns = patterns
            .into_iter()
            .filter(|p| !p.as_ref().trim().is_empty())
            .map(|p| Pattern::new(p.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    /// The parsed patterns, in order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether any pattern is a `!` exception.
    pub fn has_exclusions(&self) -> bool {
        self.patterns.iter().any(Pattern::is_exclusion)
    }

    /// Whether there are no patterns at all.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `path` (or one of its parent directories) is matched, exceptions applied.
    pub fn matches(&self, path: &str) -> bool {
        let mut matched = false;
        for pattern in &self.patterns {
            // An inclusion cannot change a match, an exception cannot change a non-match.
            if pattern.exclusion != matched {
                continue;
            }
            if pattern.matches_or_parent(path) {
                matched = !pattern.exclusion;
            }
        }
        matched
    }

    /// Whether an exception could re-include something inside the (matched) directory `dir`.
    pub(crate) fn exception_could_match_under(&self, dir: &str) -> bool {
        self.patterns
            .iter()
            .filter(|p| p.exclusion)
            .any(|p| has_wildcards(&p.cleaned) || p.could_match_under(dir))
    }

    /// Whether an inclusion pattern could match something inside `dir`.
    pub(crate) fn inclusion_could_match_under(&self, dir: &str) -> bool {
        self.patterns
            .iter()
            .filter(|p| !p.exclusion)
            .any(|p| p.could_match_under(dir))
    }
}

/// Go's `filepath.Clean` for slash-separated paths.
pub fn clean_path(path: &str) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let rooted = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|p| *p != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// Parses `.dockerignore` content into patterns as BuildKit's frontend does: a UTF-8 BOM is
/// stripped, lines starting with `#` are comments, lines are trimmed and `Clean`ed, a leading
/// `/` is dropped, and a leading `!` is kept.
pub fn parse_dockerignore(content: &str) -> Vec<String> {
    let content = content.strip_prefix('\u{feff}').unwrap_or(content);
    let mut out = Vec::new();
    for line in content.lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = clean_path(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        if invert {
            cleaned.insert(0, '!');
        }
        out.push(cleaned);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(patterns: &[&str]) -> PatternMatcher {
        PatternMatcher::new(patterns).unwrap()
    }

    #[test]
    fn literal_matches_whole_path_and_children_not_basename() {
        let pm = m(&["foo"]);
        assert!(pm.matches("foo"));
        assert!(pm.matches("foo/bar"));
        assert!(!pm.matches("a/foo"));
        assert!(!pm.matches("foobar"));
    }

    #[test]
    fn star_does_not_cross_slash() {
        let pm = m(&["*.txt"]);
        assert!(pm.matches("a.txt"));
        assert!(!pm.matches("dir/a.txt"));
        let pm = m(&["dir/*"]);
        assert!(pm.matches("dir/x"));
        assert!(pm.matches("dir/x/y"), "parent dir/x matches");
        assert!(!pm.matches("dir"));
        let pm = m(&["*/b"]);
        assert!(pm.matches("a/b"));
        assert!(!pm.matches("a/c/b"));
    }

    #[test]
    fn question_mark_is_one_non_slash_char() {
        let pm = m(&["a?c"]);
        assert!(pm.matches("abc"));
        assert!(!pm.matches("ac"));
        assert!(!pm.matches("a/c"));
        assert!(!pm.matches("abbc"));
    }

    #[test]
    fn double_star_matches_any_depth_including_zero() {
        let pm = m(&["**/x"]);
        assert!(pm.matches("x"));
        assert!(pm.matches("a/x"));
        assert!(pm.matches("a/b/x"));
        assert!(!pm.matches("ax"));
        let pm = m(&["a/**/z"]);
        assert!(pm.matches("a/z"));
        assert!(pm.matches("a/b/c/z"));
        assert!(!pm.matches("b/z"));
        let pm = m(&["a/**"]);
        assert!(pm.matches("a/b"));
        assert!(pm.matches("a/b/c"));
        let pm = m(&["**/*.go"]);
        assert!(pm.matches("main.go"));
        assert!(pm.matches("pkg/x/y.go"));
        assert!(!pm.matches("main.rs"));
        let pm = m(&["**"]);
        assert!(pm.matches("anything/at/all"));
    }

    #[test]
    fn character_classes_and_escapes() {
        let pm = m(&["file[0-9].txt"]);
        assert!(pm.matches("file3.txt"));
        assert!(!pm.matches("filex.txt"));
        let pm = m(&["file[^0-9].txt"]);
        assert!(pm.matches("filex.txt"));
        assert!(!pm.matches("file3.txt"));
        let pm = m(&["a\\*b", "q\\?[*]"]);
        assert!(pm.matches("q?*"));
        assert!(PatternMatcher::new(["[abc"]).is_err());
        assert!(PatternMatcher::new(["!"]).is_err());
    }

    #[test]
    fn exceptions_last_match_wins() {
        let pm = m(&["*.md", "!README.md"]);
        assert!(pm.matches("CHANGES.md"));
        assert!(!pm.matches("README.md"));
        let pm = m(&["*.md", "!README.md", "README.md"]);
        assert!(pm.matches("README.md"));
        let pm = m(&["node_modules", "!node_modules/keep"]);
        assert!(pm.matches("node_modules/x"));
        assert!(!pm.matches("node_modules/keep"));
        assert!(!pm.matches("node_modules/keep/inner"));
        assert!(pm.exception_could_match_under("node_modules"));
        assert!(!m(&["build"]).exception_could_match_under("build"));
    }

    #[test]
    fn leading_slash_and_cleaning() {
        let pm = m(&["/secret.txt", "./dir/../other/"]);
        assert!(pm.matches("secret.txt"));
        assert!(pm.matches("other/x"));
        assert_eq!(clean_path("a//b/./c/.."), "a/b");
        assert_eq!(clean_path("/../a"), "/a");
        assert_eq!(clean_path("../a"), "../a");
        assert_eq!(clean_path(""), ".");
        assert_eq!(clean_path("./"), ".");
    }

    #[test]
    fn dockerignore_parsing() {
        let content = "\u{feff}# comment\n  *.log  \n\n/abs/path\n! keep.log\n#nope\n dir/./sub/ \n!/root/x\n";
        assert_eq!(
            parse_dockerignore(content),
            vec!["*.log", "abs/path", "!keep.log", "dir/sub", "!root/x"]
        );
        let pm = PatternMatcher::new(parse_dockerignore(content)).unwrap();
        assert!(pm.matches("a.log"));
        assert!(!pm.matches("keep.log"));
        assert!(pm.matches("abs/path/file"));
    }

    #[test]
    fn include_prefix_checks() {
        let pm = m(&["src/main.rs", "assets/*.png"]);
        assert!(pm.inclusion_could_match_under("src"));
        assert!(pm.inclusion_could_match_under("assets"));
        assert!(!pm.inclusion_could_match_under("target"));
        assert!(!pm.inclusion_could_match_under("srcx"));
        let pm = m(&["**/*.rs"]);
        assert!(pm.inclusion_could_match_under("deep/dir"));
        let pm = m(&["a*/b"]);
        assert!(pm.inclusion_could_match_under("ab"));
        assert!(!pm.inclusion_could_match_under("b"));
    }
}
