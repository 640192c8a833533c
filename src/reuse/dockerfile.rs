//! What a Dockerfile reads from outside its context: the images it names (`FROM`, `COPY
//! --from`, `RUN --mount=…,from=`), and whether anything else makes its result unknowable
//! without a solve (`# syntax=`, `ADD <url>`, a name the parser cannot resolve).
//!
//! Deliberately conservative: whatever is not understood means "solve". The parse follows the
//! Dockerfile frontend where it matters here — parser directives, line continuations with the
//! escape character, comments, heredoc bodies skipped, `ARG`s before the first `FROM` (with
//! build args over defaults) substituted into `FROM`, stage names case-insensitive, named
//! contexts shadowing image names.

use std::collections::{BTreeMap, BTreeSet};

/// What the Dockerfile says about reuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// The images named from outside (as written after substitution), to be resolved.
    Images(BTreeSet<String>),
    /// Its result cannot be known without a solve, and why.
    Solve(String),
}

/// Scans `text` with `build_args` (which override `ARG` defaults) and the names of the named
/// contexts (which shadow images of the same name).
pub fn scan(
    text: &str,
    build_args: &BTreeMap<String, String>,
    named_contexts: &BTreeSet<String>,
) -> Scan {
    match scan_inner(text, build_args, named_contexts) {
        Ok(images) => Scan::Images(images),
        Err(why) => Scan::Solve(why),
    }
}

fn scan_inner(
    text: &str,
    build_args: &BTreeMap<String, String>,
    named_contexts: &BTreeSet<String>,
) -> Result<BTreeSet<String>, String> {
    if build_args.contains_key("BUILDKIT_SYNTAX") {
        return Err("the `BUILDKIT_SYNTAX` build arg names a frontend image that can move".into());
    }
    let (escape, body) = directives(text)?;
    let mut globals: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut stages: BTreeSet<String> = BTreeSet::new();
    let mut stage_count = 0usize;
    let mut images = BTreeSet::new();
    let mut external = |name: &str, what: &str, stages: &BTreeSet<String>, count: usize| {
        let lower = name.to_ascii_lowercase();
        if lower == "scratch"
            || stages.contains(&lower)
            || named_contexts.contains(name)
            || lower.parse::<usize>().is_ok_and(|i| i < count)
        {
            return Ok(());
        }
        if name.contains('$') || name.is_empty() {
            return Err(format!("{what} `{name}` could not be resolved here"));
        }
        images.insert(name.to_owned());
        Ok(())
    };
    for instruction in instructions(body, escape)? {
        let (keyword, rest) = split_word(&instruction);
        let keyword = keyword.to_ascii_uppercase();
        match keyword.as_str() {
            "ARG" if stage_count == 0 => {
                for decl in words(rest) {
                    let (name, default) = match decl.split_once('=') {
                        Some((n, v)) => (n.to_owned(), Some(unquote(v))),
                        None => (decl.clone(), None),
                    };
                    globals.insert(name, default);
                }
            }
            "FROM" => {
                let args = words(rest);
                let positional: Vec<&String> =
                    args.iter().filter(|a| !a.starts_with("--")).collect();
                let Some(image) = positional.first() else {
                    return Err("a `FROM` without an image".into());
                };
                let image = substitute(image, &|name| {
                    build_args
                        .get(name)
                        .cloned()
                        .or_else(|| globals.get(name).cloned().flatten())
                        .filter(|_| globals.contains_key(name))
                })?;
                external(&image, "the `FROM` image", &stages, stage_count)?;
                if let (Some(kw), Some(alias)) = (positional.get(1), positional.get(2))
                    && kw.eq_ignore_ascii_case("as")
                {
                    stages.insert(alias.to_ascii_lowercase());
                }
                stage_count += 1;
            }
            "COPY" | "ADD" => {
                let args = words(rest);
                for flag in args.iter().take_while(|a| a.starts_with("--")) {
                    if let Some(from) = flag.strip_prefix("--from=") {
                        external(&unquote(from), "`--from`", &stages, stage_count)?;
                    }
                }
                if keyword == "ADD" {
                    let sources = args.iter().skip_while(|a| a.starts_with("--"));
                    if let Some(url) = sources.clone().find(|a| is_remote(a)) {
                        return Err(format!("`ADD {url}` fetches from the network each build"));
                    }
                    if rest.trim_start().starts_with('[')
                        && (rest.contains("://") || rest.contains("git@"))
                    {
                        return Err("`ADD` of a URL fetches from the network each build".into());
                    }
                }
            }
            "RUN" => {
                for arg in words(rest).iter().take_while(|a| a.starts_with("--")) {
                    if let Some(mount) = arg.strip_prefix("--mount=") {
                        for field in mount.split(',') {
                            if let Some(from) = field.strip_prefix("from=") {
                                external(
                                    &unquote(from),
                                    "`RUN --mount` `from=`",
                                    &stages,
                                    stage_count,
                                )?;
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if stage_count == 0 {
        return Err("the Dockerfile has no `FROM`".into());
    }
    Ok(images)
}

fn is_remote(source: &str) -> bool {
    let s = unquote(source);
    s.contains("://") || s.starts_with("git@")
}

/// Parser directives at the top (`# syntax=`, `# escape=`): returns the escape character and
/// the text after them.
fn directives(text: &str) -> Result<(char, &str), String> {
    let mut escape = '\\';
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        let Some(comment) = trimmed.strip_prefix('#') else {
            break;
        };
        let Some((key, value)) = comment.split_once('=') else {
            break;
        };
        let key = key.trim().to_ascii_lowercase();
        if key.is_empty() || key.contains(char::is_whitespace) {
            break;
        }
        match key.as_str() {
            "syntax" => {
                return Err(format!(
                    "`# syntax={}` names a frontend image that can move",
                    value.trim()
                ));
            }
            "escape" => match value.trim() {
                "`" => escape = '`',
                "\\" => escape = '\\',
                other => return Err(format!("`# escape={other}` is not a valid escape")),
            },
            _ => {}
        }
        offset += line.len();
    }
    Ok((escape, &text[offset..]))
}

/// The instructions of `body`: continuation lines joined, comments and blank lines dropped,
/// heredoc bodies skipped.
fn instructions(body: &str, escape: char) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut lines = body.lines();
    let mut current = String::new();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') || (current.is_empty() && trimmed.trim().is_empty()) {
            continue;
        }
        let stripped = line.trim_end();
        if let Some(cont) = stripped.strip_suffix(escape) {
            current.push_str(cont);
            current.push(' ');
            continue;
        }
        current.push_str(stripped);
        let instruction = std::mem::take(&mut current);
        for (word, strip_tabs) in heredocs(&instruction) {
            loop {
                let Some(next) = lines.next() else {
                    return Err(format!("heredoc `{word}` is not terminated"));
                };
                let candidate = if strip_tabs {
                    next.trim_start_matches('\t')
                } else {
                    next
                };
                if candidate == word {
                    break;
                }
            }
        }
        out.push(instruction);
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    Ok(out)
}

/// The heredoc markers of an instruction (`<<EOF`, `<<-"EOF"`), in order.
fn heredocs(instruction: &str) -> Vec<(String, bool)> {
    let (keyword, _) = split_word(instruction);
    if !matches!(
        keyword.to_ascii_uppercase().as_str(),
        "RUN" | "COPY" | "ADD"
    ) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut rest = instruction;
    while let Some(at) = rest.find("<<") {
        let after = &rest[at + 2..];
        let (strip, after) = match after.strip_prefix('-') {
            Some(a) => (true, a),
            None => (false, after),
        };
        let word: String = after
            .trim_start_matches(['"', '\''])
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !word.is_empty() {
            out.push((word, strip));
        }
        rest = after;
    }
    out
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// Whitespace-separated words, quotes kept.
fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner.to_owned();
        }
    }
    s.to_owned()
}

/// `$NAME`, `${NAME}`, `${NAME:-default}`, `${NAME-default}`, `${NAME:+alt}`, `${NAME+alt}`
/// with `lookup`; any other form is left unresolved (the caller sees the `$`).
fn substitute(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let s = unquote(s);
    let mut out = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        if s[i + 1..].starts_with('{') {
            let Some(end) = s[i + 2..].find('}') else {
                return Err(format!("`{s}`: unterminated `${{`"));
            };
            let inner = &s[i + 2..i + 2 + end];
            let (name, op, word) = match inner.find([':', '-', '+']) {
                Some(p) => {
                    let (name, tail) = inner.split_at(p);
                    let (op, word) = if tail.starts_with(":-") || tail.starts_with(":+") {
                        tail.split_at(2)
                    } else {
                        tail.split_at(1)
                    };
                    (name, op, word)
                }
                None => (inner, "", ""),
            };
            let value = lookup(name);
            let resolved = match op {
                "" => value,
                ":-" => value.filter(|v| !v.is_empty()).or(Some(word.to_owned())),
                "-" => value.or(Some(word.to_owned())),
                ":+" => Some(
                    value
                        .filter(|v| !v.is_empty())
                        .map_or(String::new(), |_| word.to_owned()),
                ),
                "+" => Some(value.map_or(String::new(), |_| word.to_owned())),
                _ => None,
            };
            match resolved {
                Some(v) => out.push_str(&v),
                None => out.push_str(&s[i..i + 3 + end]),
            }
            for _ in 0..end + 2 {
                chars.next();
            }
        } else {
            let name: String = s[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            match lookup(&name) {
                Some(v) if !name.is_empty() => out.push_str(&v),
                _ => out.push_str(&s[i..=i + name.len()]),
            }
            for _ in 0..name.len() {
                chars.next();
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(text: &str, args: &[(&str, &str)]) -> Scan {
        let args = args
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        scan(text, &args, &BTreeSet::new())
    }

    fn set(names: &[&str]) -> Scan {
        Scan::Images(names.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn from_images_with_global_args_and_stages() {
        let df = "ARG BASE=busybox:1\nARG TAG\nFROM ${BASE} AS build\nRUN make\n\
                  FROM build AS test\nFROM alpine:${TAG:-3.20}\nCOPY --from=build /a /a\n\
                  COPY --from=0 /b /b\nCOPY --from=golang:1.22 /usr/local/go /go\n";
        assert_eq!(
            images(df, &[]),
            set(&["alpine:3.20", "busybox:1", "golang:1.22"])
        );
        assert_eq!(
            images(df, &[("BASE", "reg.local/base@sha256:ab"), ("TAG", "3.19")]),
            set(&["alpine:3.19", "golang:1.22", "reg.local/base@sha256:ab"])
        );
    }

    #[test]
    fn a_build_arg_without_an_arg_declaration_does_not_reach_from() {
        assert!(matches!(
            images("FROM $BASE\n", &[("BASE", "x")]),
            Scan::Solve(_)
        ));
    }

    #[test]
    fn never_known_without_a_solve() {
        for (df, args) in [
            ("# syntax=docker/dockerfile:1\nFROM busybox\n", vec![]),
            ("#syntax = docker/dockerfile:1.7\nFROM busybox\n", vec![]),
            ("FROM busybox\nADD https://example.com/a.tgz /a\n", vec![]),
            (
                "FROM busybox\nADD --checksum=sha256:00 http://x/y /y\n",
                vec![],
            ),
            ("FROM busybox\nADD git@github.com:a/b.git /src\n", vec![]),
            ("FROM busybox\nADD [\"https://x/a\", \"/a\"]\n", vec![]),
            ("FROM $UNSET\n", vec![]),
            ("FROM busybox:${TARGETARCH}\n", vec![]),
            ("RUN true\n", vec![]),
            ("FROM busybox\n", vec![("BUILDKIT_SYNTAX", "x/y")]),
        ] {
            assert!(matches!(images(df, &args), Scan::Solve(_)), "{df}");
        }
    }

    #[test]
    fn continuations_comments_and_heredocs() {
        let df = "FROM busybox \\\n  AS one\n# FROM commented:1\nRUN <<EOF\nFROM fake:1\nADD http://no\nEOF\n\
                  COPY <<-END /x\n\tFROM fake:2\n\tEND\nFROM one\n";
        assert_eq!(images(df, &[]), set(&["busybox"]));
        let backtick = "# escape=`\nFROM busybox `\n  AS b\nRUN --mount=type=bind,from=alpine:3,target=/a true\n";
        assert_eq!(images(backtick, &[]), set(&["alpine:3", "busybox"]));
    }

    #[test]
    fn named_contexts_and_scratch_are_not_resolved() {
        let named = BTreeSet::from(["base".to_owned()]);
        assert_eq!(
            scan(
                "FROM base\nFROM scratch\nCOPY --from=base / /\n",
                &BTreeMap::new(),
                &named
            ),
            set(&[])
        );
    }

    #[test]
    fn substitution_forms() {
        let look = |n: &str| match n {
            "A" => Some("a".to_owned()),
            "E" => Some(String::new()),
            _ => None,
        };
        for (input, want) in [
            ("$A-x", "a-x"),
            ("${A}", "a"),
            ("${E:-d}", "d"),
            ("${E-d}", ""),
            ("${U-d}", "d"),
            ("${A:+alt}", "alt"),
            ("${U:+alt}", ""),
            ("${U}", "${U}"),
            ("$U", "$U"),
        ] {
            assert_eq!(substitute(input, &look).unwrap(), want, "{input}");
        }
    }
}
