//! The part of Go's `regexp` that `.dockerignore` patterns reach, matched in linear time.
//!
//! patternmatcher turns a pattern into a Go regular expression (`^…$`) and lets Go's `regexp`
//! package parse it, so the exact meaning of a pattern is Go's regexp syntax (RE2 with the
//! `syntax.Perl` flags: `ClassNL | OneLine | PerlX | UnicodeGroups`, case-sensitive) applied
//! to that translation. This module parses that syntax the way Go's `regexp/syntax` does —
//! same accepted forms, same errors — and matches with a Thompson NFA simulated as a set of
//! positions (no backtracking): time is O(input length × program size), and the parser, the
//! compiler and the matcher use explicit stacks, never recursion on user input.
//!
//! Input is matched as Go does it: bytes decoded as UTF-8, every byte of an invalid sequence is
//! one `U+FFFD` (so `.`, `[^/]` and a literal `U+FFFD` match it).
//!
//! What patternmatcher's translation can produce: its own `^`, `$`, `.*`, `[^/]`, `[^/]*` and
//! `(.*/)?`; every escape (`\c` is copied as is); classes with all of Go's class syntax; `^`
//! anchors; and — because patternmatcher's `shouldEscape` bitmap loses the bits of bytes
//! ≥ 64 — unescaped `|` (alternation: `a*|b` is `^a[^/]*` or `b$`) and `{n,m}` repetition.
//! `(` and `)` are always escaped, so the only groups are its own, and `(?flags)` never occurs
//! (an error here if it did).
//!
//! One file past the usual ~700 lines, on purpose: the parser, the compiler to NFA
//! instructions and the matcher share the instruction and class types and are checked together
//! against Go's `regexp/syntax` (the tests at the end); apart, each would reach into the
//! others' internals.

use std::sync::Arc;

/// Largest code point (`unicode.MaxRune`).
const MAX_RUNE: u32 = 0x10_FFFF;
/// `utf8.RuneError`.
pub(crate) const RUNE_ERROR: char = '\u{FFFD}';

/// Go's `utf8.DecodeRune`: the first rune of `b` and its length in bytes; an invalid or
/// truncated sequence is `U+FFFD` of length 1. `b` must not be empty.
pub(crate) fn decode_rune(b: &[u8]) -> (char, usize) {
    let first = b[0];
    let len = match first {
        0x00..=0x7F => return (char::from(first), 1),
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return (RUNE_ERROR, 1),
    };
    match b.get(..len).map(std::str::from_utf8) {
        Some(Ok(s)) => (s.chars().next().unwrap_or(RUNE_ERROR), len),
        _ => (RUNE_ERROR, 1),
    }
}

/// Go's `utf8.DecodeLastRune`: the last rune of `b` and its length. `b` must not be empty.
pub(crate) fn decode_last_rune(b: &[u8]) -> (char, usize) {
    let end = b.len();
    if b[end - 1] < 0x80 {
        return (char::from(b[end - 1]), 1);
    }
    let lim = end.saturating_sub(4);
    let mut start = end - 1;
    while start > lim {
        start -= 1;
        // utf8.RuneStart: not a continuation byte.
        if b[start] & 0xC0 != 0x80 {
            break;
        }
    }
    let (r, size) = decode_rune(&b[start..end]);
    if start + size == end {
        (r, size)
    } else {
        (RUNE_ERROR, 1)
    }
}

/// An empty-width assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    BeginText,
    EndText,
    WordBoundary,
    NoWordBoundary,
}

/// Sorted, merged, inclusive code point ranges (shared: repetitions copy them).
type Ranges = Arc<[(u32, u32)]>;

/// Parse tree.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Class(Ranges),
    Look(Look),
    Concat(Vec<Node>),
    Alternate(Vec<Node>),
    Star(Box<Node>),
    Plus(Box<Node>),
    Quest(Box<Node>),
    /// `{min,max}`; `max` `None` for `{min,}`.
    Repeat {
        sub: Box<Node>,
        min: u32,
        max: Option<u32>,
    },
}

/// Parser stack entry: a finished node, the marker of an open `(`, or the alternatives
/// finished so far at this level (Go's `opVerticalBar`).
enum Item {
    Node(Node),
    LeftParen,
    VerticalBar(Vec<Node>),
}

/// Most instructions in one program: fastbuild's own bound (Go's is 3.3 million), which
/// counted repetitions (`?{1000}`) could otherwise blow up within a 4096-byte pattern.
pub(crate) const MAX_INSTS: usize = 50_000;

/// A parse error, with Go's error code text, or a program over [`MAX_INSTS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SyntaxError {
    /// Go's regexp package rejects the expression.
    Go(String),
    /// Valid, but larger than fastbuild accepts.
    TooLarge,
}

fn err<T>(code: &str, expr: &str) -> Result<T, SyntaxError> {
    Err(SyntaxError::Go(format!("{code}: `{expr}`")))
}

/// `nextRune` of the parser: the input is always valid UTF-8 (it is a Rust `str`).
fn next_rune(s: &str) -> Option<(char, &str)> {
    let c = s.chars().next()?;
    Some((c, &s[c.len_utf8()..]))
}

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

fn unhex(c: char) -> Option<u32> {
    c.to_digit(16)
}

fn lit(c: char) -> Node {
    Node::Class(Arc::new([(u32::from(c), u32::from(c))]))
}

/// Sorts and merges ranges (`cleanClass`).
fn clean_class(mut r: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    r.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(r.len());
    for (lo, hi) in r {
        if let Some(last) = out.last_mut()
            && lo <= last.1.saturating_add(1)
        {
            last.1 = last.1.max(hi);
            continue;
        }
        out.push((lo, hi));
    }
    out
}

/// The complement of clean ranges within `0..=MAX_RUNE` (`negateClass`).
fn negate(r: &[(u32, u32)]) -> Vec<(u32, u32)> {
    let mut out = Vec::with_capacity(r.len() + 1);
    let mut next = 0u32;
    for &(lo, hi) in r {
        if lo > next {
            out.push((next, lo - 1));
        }
        next = hi + 1;
    }
    if next <= MAX_RUNE {
        out.push((next, MAX_RUNE));
    }
    out
}

// `regexp/syntax/perl_groups.go`: the Perl and POSIX classes are ASCII only.
const DIGIT: &[(u32, u32)] = &[(0x30, 0x39)];
const SPACE_PERL: &[(u32, u32)] = &[(0x9, 0xa), (0xc, 0xd), (0x20, 0x20)];
const WORD: &[(u32, u32)] = &[(0x30, 0x39), (0x41, 0x5a), (0x5f, 0x5f), (0x61, 0x7a)];

fn perl_group(name: &str) -> Option<(bool, &'static [(u32, u32)])> {
    Some(match name {
        r"\d" => (true, DIGIT),
        r"\D" => (false, DIGIT),
        r"\s" => (true, SPACE_PERL),
        r"\S" => (false, SPACE_PERL),
        r"\w" => (true, WORD),
        r"\W" => (false, WORD),
        _ => return None,
    })
}

fn posix_group(name: &str) -> Option<(bool, &'static [(u32, u32)])> {
    let (positive, bare) = match name.strip_prefix("[:^") {
        Some(rest) => (false, rest),
        None => (true, name.strip_prefix("[:")?),
    };
    let ranges: &'static [(u32, u32)] = match bare {
        "alnum:]" => &[(0x30, 0x39), (0x41, 0x5a), (0x61, 0x7a)],
        "alpha:]" => &[(0x41, 0x5a), (0x61, 0x7a)],
        "ascii:]" => &[(0x0, 0x7f)],
        "blank:]" => &[(0x9, 0x9), (0x20, 0x20)],
        "cntrl:]" => &[(0x0, 0x1f), (0x7f, 0x7f)],
        "digit:]" => DIGIT,
        "graph:]" => &[(0x21, 0x7e)],
        "lower:]" => &[(0x61, 0x7a)],
        "print:]" => &[(0x20, 0x7e)],
        "punct:]" => &[(0x21, 0x2f), (0x3a, 0x40), (0x5b, 0x60), (0x7b, 0x7e)],
        "space:]" => &[(0x9, 0xd), (0x20, 0x20)],
        "upper:]" => &[(0x41, 0x5a)],
        "word:]" => WORD,
        "xdigit:]" => &[(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
        _ => return None,
    };
    Some((positive, ranges))
}

fn append_group(class: &mut Vec<(u32, u32)>, positive: bool, ranges: &[(u32, u32)]) {
    if positive {
        class.extend_from_slice(ranges);
    } else {
        class.extend(negate(ranges));
    }
}

/// The code points of a Unicode class name as Go's `unicodeTable` resolves it. Only names that
/// patternmatcher's translation can produce are handled: a single letter after `\p`/`\P` (a `{`
/// is always escaped), i.e. the seven major general categories, any letter case (Go's
/// `canonicalName`). Tables come from `regex-syntax` (Go 1.26 ships Unicode 15.0.0; the
/// tables here may be a newer Unicode version, which only differs for newly assigned code
/// points).
fn unicode_table(name: &str) -> Option<Vec<(u32, u32)>> {
    let canonical = match name {
        "C" | "c" => "C",
        "L" | "l" => "L",
        "M" | "m" => "M",
        "N" | "n" => "N",
        "P" | "p" => "P",
        "S" | "s" => "S",
        "Z" | "z" => "Z",
        _ => return None,
    };
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(&format!(r"\p{{{canonical}}}"))
        .ok()?;
    match hir.kind() {
        regex_syntax::hir::HirKind::Class(regex_syntax::hir::Class::Unicode(class)) => Some(
            class
                .iter()
                .map(|r| (u32::from(r.start()), u32::from(r.end())))
                .collect(),
        ),
        _ => None,
    }
}

struct Parser {
    stack: Vec<Item>,
}

impl Parser {
    fn push(&mut self, node: Node) {
        self.stack.push(Item::Node(node));
    }

    /// `parseEscape`: one escaped rune at the start of `s` (which starts with `\`).
    fn parse_escape(input: &str) -> Result<(char, &str), SyntaxError> {
        let Some((c, t)) = next_rune(&input[1..]) else {
            return err("trailing backslash at end of expression", "");
        };
        let bad = |t: &str| err("invalid escape sequence", &input[..input.len() - t.len()]);
        match c {
            '1'..='7' | '0' => {
                // A single non-zero digit would be a backreference: not supported.
                if c != '0' && !t.starts_with(|d: char| ('0'..='7').contains(&d)) {
                    return bad(t);
                }
                let mut value = c as u32 - '0' as u32;
                let mut t = t;
                for _ in 1..3 {
                    match t.as_bytes().first() {
                        Some(&digit @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(digit - b'0');
                            t = &t[1..];
                        }
                        _ => break,
                    }
                }
                Ok((char::from_u32(value).unwrap_or(RUNE_ERROR), t))
            }
            'x' => {
                let Some((c, t)) = next_rune(t) else {
                    return bad(t);
                };
                if c == '{' {
                    let mut t = t;
                    let mut value = 0u32;
                    let mut digits = 0;
                    loop {
                        let Some((c, rest)) = next_rune(t) else {
                            return bad(t);
                        };
                        t = rest;
                        if c == '}' {
                            break;
                        }
                        let Some(digit) = unhex(c) else {
                            return bad(t);
                        };
                        value = value * 16 + digit;
                        if value > MAX_RUNE {
                            return bad(t);
                        }
                        digits += 1;
                    }
                    if digits == 0 {
                        return bad(t);
                    }
                    // Surrogates are not runes in Rust; Go would accept them but they can
                    // never match decoded input.
                    return Ok((char::from_u32(value).unwrap_or(RUNE_ERROR), t));
                }
                let high = unhex(c);
                let (c2, t) = next_rune(t).unwrap_or((RUNE_ERROR, t));
                match (high, unhex(c2)) {
                    (Some(high), Some(low)) => {
                        Ok((char::from_u32(high * 16 + low).unwrap_or(RUNE_ERROR), t))
                    }
                    _ => bad(t),
                }
            }
            'a' => Ok(('\u{7}', t)),
            'f' => Ok(('\u{c}', t)),
            'n' => Ok(('\n', t)),
            'r' => Ok(('\r', t)),
            't' => Ok(('\t', t)),
            'v' => Ok(('\u{b}', t)),
            c if c.is_ascii() && !is_alnum(c) => Ok((c, t)),
            _ => bad(t),
        }
    }

    /// `parseUnicodeClass`: `Ok(None)` when `s` does not start with `\p` or `\P`.
    fn parse_unicode_class(
        s: &str,
        class: &mut Vec<(u32, u32)>,
    ) -> Result<Option<usize>, SyntaxError> {
        let b = s.as_bytes();
        if b.len() < 2 || b[0] != b'\\' || (b[1] != b'p' && b[1] != b'P') {
            return Ok(None);
        }
        let mut positive = b[1] == b'p';
        let t = &s[2..];
        let (seq_len, mut name) = match next_rune(t) {
            Some(('{', _)) => {
                let Some(end) = s.find('}') else {
                    return err("invalid character class range", s);
                };
                (end + 1, &s[3..end])
            }
            Some((c, _)) => (2 + c.len_utf8(), &t[..c.len_utf8()]),
            None => (2, ""),
        };
        if let Some(rest) = name.strip_prefix('^') {
            positive = !positive;
            name = rest;
        }
        let Some(table) = unicode_table(name) else {
            return err("invalid character class range", &s[..seq_len]);
        };
        append_group(class, positive, &table);
        Ok(Some(seq_len))
    }

    /// `parseClass`: `s` starts with `[`; returns the rest after the closing `]`.
    fn parse_class(&mut self, s: &str) -> Result<usize, SyntaxError> {
        let mut t = &s[1..];
        let mut negated = false;
        if let Some(rest) = t.strip_prefix('^') {
            negated = true;
            t = rest;
        }
        let mut class: Vec<(u32, u32)> = Vec::new();
        let mut first = true;
        while t.is_empty() || !t.starts_with(']') || first {
            first = false;
            // POSIX [:alnum:] etc.; the name runs to the first `:]` anywhere after.
            if t.len() > 2
                && t.starts_with("[:")
                && let Some(i) = t[2..].find(":]")
            {
                let name = &t[..i + 4];
                let Some((positive, ranges)) = posix_group(name) else {
                    return err("invalid character class range", name);
                };
                append_group(&mut class, positive, ranges);
                t = &t[i + 4..];
                continue;
            }
            if let Some(n) = Self::parse_unicode_class(t, &mut class)? {
                t = &t[n..];
                continue;
            }
            if let Some((positive, ranges)) = t.get(..2).and_then(perl_group) {
                append_group(&mut class, positive, ranges);
                t = &t[2..];
                continue;
            }
            let range_start = t;
            let (lo, rest) = Self::parse_class_char(t, s)?;
            t = rest;
            let mut hi = lo;
            if t.len() >= 2 && t.starts_with('-') && t.as_bytes()[1] != b']' {
                let (h, rest) = Self::parse_class_char(&t[1..], s)?;
                t = rest;
                hi = h;
                if hi < lo {
                    return err(
                        "invalid character class range",
                        &range_start[..range_start.len() - t.len()],
                    );
                }
            }
            class.push((u32::from(lo), u32::from(hi)));
        }
        t = &t[1..];
        let mut class = clean_class(class);
        if negated {
            class = negate(&class);
        }
        self.push(Node::Class(class.into()));
        Ok(s.len() - t.len())
    }

    fn parse_class_char<'a>(s: &'a str, whole: &str) -> Result<(char, &'a str), SyntaxError> {
        if s.is_empty() {
            return err("missing closing ]", whole);
        }
        if s.starts_with('\\') {
            return Self::parse_escape(s);
        }
        Ok(next_rune(s).expect("not empty"))
    }

    /// Applies a repetition to the last item (Go: missing argument when there is none, or
    /// when it is a `(` or `|`).
    fn repeat(
        &mut self,
        wrap: impl FnOnce(Box<Node>) -> Node,
        expr: &str,
    ) -> Result<(), SyntaxError> {
        let Some(Item::Node(sub)) = self.stack.pop() else {
            return err("missing argument to repetition operator", expr);
        };
        self.push(wrap(Box::new(sub)));
        Ok(())
    }

    /// Pops the nodes above the innermost `(` or `|` marker into one concatenation.
    fn concat(&mut self) -> Node {
        let mut nodes = Vec::new();
        while let Some(Item::Node(_)) = self.stack.last() {
            if let Some(Item::Node(n)) = self.stack.pop() {
                nodes.push(n);
            }
        }
        nodes.reverse();
        Node::Concat(nodes)
    }

    /// `|`: the concatenation so far becomes one more alternative.
    fn vertical_bar(&mut self) {
        let alt = self.concat();
        if let Some(Item::VerticalBar(alts)) = self.stack.last_mut() {
            alts.push(alt);
        } else {
            self.stack.push(Item::VerticalBar(vec![alt]));
        }
    }

    /// At `)` or the end: the concatenation, or the alternation it ends.
    fn alternate(&mut self) -> Node {
        let last = self.concat();
        if let Some(Item::VerticalBar(_)) = self.stack.last()
            && let Some(Item::VerticalBar(mut alts)) = self.stack.pop()
        {
            alts.push(last);
            return Node::Alternate(alts);
        }
        last
    }
}

/// Go's `parseRepeat`: `{n}`, `{n,}` or `{n,m}` at the start of `t`: (min, max or -1 for none,
/// length); a number of 10^8 or more reads as -1. `None` when `{` is a literal.
fn parse_counted(t: &str) -> Option<(i64, i64, usize)> {
    fn int(s: &str) -> Option<(i64, &str)> {
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || (digits >= 2 && s.starts_with('0')) {
            return None;
        }
        let mut n: i64 = 0;
        for b in s[..digits].bytes() {
            if n >= 100_000_000 {
                n = -1;
                break;
            }
            n = n * 10 + i64::from(b - b'0');
        }
        Some((n, &s[digits..]))
    }
    let (mut min, s) = int(t.strip_prefix('{')?)?;
    let (max, s) = match s.strip_prefix(',') {
        None => (min, s),
        Some("") => return None,
        Some(rest) if rest.starts_with('}') => (-1, rest),
        Some(rest) => {
            let (max, rest) = int(rest)?;
            if max < 0 {
                min = -1;
            }
            (max, rest)
        }
    };
    let rest = s.strip_prefix('}')?;
    Some((min, max, t.len() - rest.len()))
}

/// Parses `expr` with Go's `regexp/syntax` rules under the `Perl` flags.
fn parse(expr: &str) -> Result<Node, SyntaxError> {
    let mut p = Parser { stack: Vec::new() };
    let mut t = expr;
    let mut last_repeat = false;
    while let Some(c) = t.chars().next() {
        let mut repeat = false;
        match c {
            '(' => {
                if t.as_bytes().get(1) == Some(&b'?') {
                    return err("unsupported Perl syntax", &t[..2]);
                }
                p.stack.push(Item::LeftParen);
                t = &t[1..];
            }
            '|' => {
                p.vertical_bar();
                t = &t[1..];
            }
            ')' => {
                let node = p.alternate();
                if !matches!(p.stack.pop(), Some(Item::LeftParen)) {
                    return err("unexpected )", expr);
                }
                p.push(node);
                t = &t[1..];
            }
            '^' => {
                p.push(Node::Look(Look::BeginText));
                t = &t[1..];
            }
            '$' => {
                p.push(Node::Look(Look::EndText));
                t = &t[1..];
            }
            '.' => {
                // Not DotNL: any rune but `\n`.
                p.push(Node::Class(Arc::new([(0, 9), (11, MAX_RUNE)])));
                t = &t[1..];
            }
            '[' => {
                let n = p.parse_class(t)?;
                t = &t[n..];
            }
            '*' | '+' | '?' | '{' => {
                let counted = if c == '{' {
                    let Some((min, max, len)) = parse_counted(t) else {
                        // Not a repetition: a literal `{`.
                        p.push(lit('{'));
                        t = &t[1..];
                        last_repeat = false;
                        continue;
                    };
                    if !(0..=1000).contains(&min) || max > 1000 || (max >= 0 && min > max) {
                        return err("invalid repeat count", &t[..len]);
                    }
                    Some((min as u32, u32::try_from(max).ok(), len))
                } else {
                    None
                };
                let mut after = &t[counted.map_or(1, |(_, _, len)| len)..];
                // A `?` after a repetition makes it non-greedy: same set of matches.
                if let Some(rest) = after.strip_prefix('?') {
                    after = rest;
                }
                let op = &t[..t.len() - after.len()];
                if last_repeat {
                    return err("invalid nested repetition operator", op);
                }
                match (c, counted) {
                    ('*', _) => p.repeat(Node::Star, op)?,
                    ('+', _) => p.repeat(Node::Plus, op)?,
                    ('?', _) => p.repeat(Node::Quest, op)?,
                    (_, Some((min, max, _))) => {
                        p.repeat(|sub| Node::Repeat { sub, min, max }, op)?;
                    }
                    _ => unreachable!("`{{` is counted"),
                }
                repeat = true;
                t = after;
            }
            '\\' => {
                let special = match t.as_bytes().get(1) {
                    Some(b'A') => Some(Node::Look(Look::BeginText)),
                    Some(b'b') => Some(Node::Look(Look::WordBoundary)),
                    Some(b'B') => Some(Node::Look(Look::NoWordBoundary)),
                    Some(b'z') => Some(Node::Look(Look::EndText)),
                    Some(b'C') => return err("invalid escape sequence", &t[..2]),
                    Some(b'Q') => {
                        // \Q ... \E: literals up to `\E` or the end.
                        let (quoted, rest) = t[2..].split_once(r"\E").unwrap_or((&t[2..], ""));
                        for q in quoted.chars() {
                            p.push(lit(q));
                        }
                        t = rest;
                        last_repeat = false;
                        continue;
                    }
                    _ => None,
                };
                if let Some(node) = special {
                    p.push(node);
                    t = &t[2..];
                } else {
                    let mut class = Vec::new();
                    if let Some(n) = Parser::parse_unicode_class(t, &mut class)? {
                        p.push(Node::Class(clean_class(class).into()));
                        t = &t[n..];
                    } else if let Some((positive, ranges)) = t.get(..2).and_then(perl_group) {
                        append_group(&mut class, positive, ranges);
                        p.push(Node::Class(clean_class(class).into()));
                        t = &t[2..];
                    } else {
                        let (escaped, rest) = Parser::parse_escape(t)?;
                        p.push(lit(escaped));
                        t = rest;
                    }
                }
            }
            c => {
                p.push(lit(c));
                t = &t[c.len_utf8()..];
            }
        }
        last_repeat = repeat;
    }
    let node = p.alternate();
    if !p.stack.is_empty() {
        return err("missing closing )", expr);
    }
    Ok(node)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Inst {
    /// One rune in the ranges, then the next instruction.
    Class(Ranges),
    Split(usize, usize),
    Jmp(usize),
    Look(Look),
    Match,
}

/// A compiled expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Program {
    insts: Vec<Inst>,
    /// Starts with `^` at the top level: matches can only start at 0.
    anchored: bool,
}

/// Emits instructions. Recursion follows the nesting of the parse tree, which patterns cannot
/// deepen: they have no parentheses of their own.
struct Compiler {
    insts: Vec<Inst>,
}

impl Compiler {
    fn emit(&mut self, inst: Inst) -> Result<usize, SyntaxError> {
        if self.insts.len() >= MAX_INSTS {
            return Err(SyntaxError::TooLarge);
        }
        self.insts.push(inst);
        Ok(self.insts.len() - 1)
    }

    fn star(&mut self, sub: &Node) -> Result<(), SyntaxError> {
        // L: split(body, out); body; jmp L; out:
        let split = self.emit(Inst::Split(0, 0))?;
        self.node(sub)?;
        self.emit(Inst::Jmp(split))?;
        self.insts[split] = Inst::Split(split + 1, self.insts.len());
        Ok(())
    }

    fn quest(&mut self, sub: &Node) -> Result<(), SyntaxError> {
        let split = self.emit(Inst::Split(0, 0))?;
        self.node(sub)?;
        self.insts[split] = Inst::Split(split + 1, self.insts.len());
        Ok(())
    }

    fn node(&mut self, node: &Node) -> Result<(), SyntaxError> {
        match node {
            Node::Class(ranges) => {
                self.emit(Inst::Class(ranges.clone()))?;
            }
            Node::Look(look) => {
                self.emit(Inst::Look(*look))?;
            }
            Node::Concat(nodes) => {
                for n in nodes {
                    self.node(n)?;
                }
            }
            Node::Alternate(alts) => {
                let mut ends = Vec::new();
                for (i, alt) in alts.iter().enumerate() {
                    if i + 1 == alts.len() {
                        self.node(alt)?;
                    } else {
                        let split = self.emit(Inst::Split(0, 0))?;
                        self.node(alt)?;
                        ends.push(self.emit(Inst::Jmp(0))?);
                        self.insts[split] = Inst::Split(split + 1, self.insts.len());
                    }
                }
                let out = self.insts.len();
                for end in ends {
                    self.insts[end] = Inst::Jmp(out);
                }
            }
            Node::Star(sub) => self.star(sub)?,
            Node::Plus(sub) => {
                let start = self.insts.len();
                self.node(sub)?;
                self.emit(Inst::Split(start, self.insts.len() + 1))?;
            }
            Node::Quest(sub) => self.quest(sub)?,
            // `x{2,4}` as `xxx?x?` and `x{2,}` as `xxx*`: the same strings.
            Node::Repeat { sub, min, max } => {
                for _ in 0..*min {
                    self.node(sub)?;
                }
                match max {
                    None => self.star(sub)?,
                    Some(max) => {
                        for _ in *min..*max {
                            self.quest(sub)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl Program {
    /// Parses and compiles a Go regular expression.
    pub(crate) fn new(expr: &str) -> Result<Self, SyntaxError> {
        let node = parse(expr)?;
        let anchored = matches!(&node, Node::Concat(nodes)
            if nodes.first() == Some(&Node::Look(Look::BeginText)));
        let mut compiler = Compiler { insts: Vec::new() };
        compiler.node(&node)?;
        compiler.emit(Inst::Match)?;
        Ok(Self {
            insts: compiler.insts,
            anchored,
        })
    }

    /// Whether the expression matches somewhere in `input` (Go's `MatchString`: a search,
    /// so `^a|b$` matches `xb`). When the expression starts with `^` outside any alternation,
    /// only position 0 starts a thread. `steps` counts instruction visits (for tests of the
    /// linear bound).
    pub(crate) fn is_match(&self, input: &[u8], steps: &mut u64) -> bool {
        let n = self.insts.len();
        let mut current = SparseSet::new(n);
        let mut next = SparseSet::new(n);
        let mut stack = Vec::new();
        let mut pos = 0;
        loop {
            if pos == 0 || !self.anchored {
                self.add(&mut current, &mut stack, 0, input, pos, steps);
            }
            if current.is_empty() {
                return false;
            }
            if pos >= input.len() {
                return current.iter().any(|pc| self.insts[pc] == Inst::Match);
            }
            let (r, width) = decode_rune(&input[pos..]);
            let r = u32::from(r);
            for i in 0..current.len() {
                let pc = current.dense[i];
                *steps += 1;
                match &self.insts[pc] {
                    Inst::Match => return true,
                    Inst::Class(ranges) if class_contains(ranges, r) => {
                        self.add(&mut next, &mut stack, pc + 1, input, pos + width, steps);
                    }
                    _ => {}
                }
            }
            std::mem::swap(&mut current, &mut next);
            next.clear();
            pos += width;
        }
    }

    /// Adds `pc` and everything reachable from it without consuming input.
    fn add(
        &self,
        set: &mut SparseSet,
        stack: &mut Vec<usize>,
        pc: usize,
        input: &[u8],
        pos: usize,
        steps: &mut u64,
    ) {
        stack.push(pc);
        while let Some(pc) = stack.pop() {
            if set.contains(pc) {
                continue;
            }
            set.insert(pc);
            *steps += 1;
            match &self.insts[pc] {
                Inst::Jmp(to) => stack.push(*to),
                Inst::Split(a, b) => {
                    stack.push(*b);
                    stack.push(*a);
                }
                Inst::Look(look) => {
                    if look_holds(*look, input, pos) {
                        stack.push(pc + 1);
                    }
                }
                Inst::Class(_) | Inst::Match => {}
            }
        }
    }

    /// A readable dump, for tests.
    #[cfg(test)]
    pub(crate) fn dump(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for (i, inst) in self.insts.iter().enumerate() {
            let _ = writeln!(out, "{i}: {inst:?}");
        }
        out
    }
}

fn class_contains(ranges: &[(u32, u32)], r: u32) -> bool {
    // Ranges are sorted and disjoint: the last range starting at or before `r`.
    let idx = ranges.partition_point(|&(lo, _)| lo <= r);
    idx > 0 && r <= ranges[idx - 1].1
}

/// Go's `syntax.IsWordChar`: ASCII only, so byte-level checks agree with rune-level ones.
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn look_holds(look: Look, input: &[u8], pos: usize) -> bool {
    match look {
        Look::BeginText => pos == 0,
        Look::EndText => pos == input.len(),
        Look::WordBoundary | Look::NoWordBoundary => {
            let before = pos > 0 && is_word_byte(input[pos - 1]);
            let after = pos < input.len() && is_word_byte(input[pos]);
            (before != after) == (look == Look::WordBoundary)
        }
    }
}

/// A set of small integers with O(1) insert, membership and clear.
struct SparseSet {
    dense: Vec<usize>,
    sparse: Vec<usize>,
}

impl SparseSet {
    fn new(n: usize) -> Self {
        Self {
            dense: Vec::with_capacity(n),
            sparse: vec![0; n],
        }
    }
    fn contains(&self, v: usize) -> bool {
        let i = self.sparse[v];
        i < self.dense.len() && self.dense[i] == v
    }
    fn insert(&mut self, v: usize) {
        self.sparse[v] = self.dense.len();
        self.dense.push(v);
    }
    fn is_empty(&self) -> bool {
        self.dense.is_empty()
    }
    fn len(&self) -> usize {
        self.dense.len()
    }
    fn clear(&mut self) {
        self.dense.clear();
    }
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.dense.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(re: &str, input: &[u8]) -> bool {
        Program::new(re)
            .unwrap_or_else(|e| panic!("{re}: {e:?}"))
            .is_match(input, &mut 0)
    }

    fn bad(re: &str) -> bool {
        Program::new(re).is_err()
    }

    #[test]
    fn go_syntax_basics() {
        assert!(m("^a[^/]*$", b"abc"));
        assert!(!m("^a[^/]*$", b"a/c"));
        assert!(m("^(.*/)?b$", b"b"));
        assert!(m("^(.*/)?b$", b"x/y/b"));
        assert!(!m("^(.*/)?b$", b"x\n/b"), "`.` does not match a newline");
        assert!(
            m("^[^/]$", b"\n"),
            "a negated class matches a newline (ClassNL)"
        );
        assert!(m(r"^\d$", b"7"));
        assert!(!m(r"^\d$", b"d"));
        assert!(m(r"^[[:alpha:]]+$", b"abc"));
        assert!(m(r"^a\x41$", b"aA"));
        assert!(m(r"^\101$", b"A"));
        assert!(m(r"^\Qa[b\E$", b"a[b"));
        assert!(m(r"^\Qa[b$", b"a[b$xyz"), "\\Q swallows the `$`");
        assert!(m(r"^a\b$", b"a"));
        assert!(!m(r"^a\bb$", b"ab"));
        assert!(!m(r"^a^b$", b"ab"));
        assert!(m(r"^[a-]$", b"-"));
        assert!(m(r"^[]a]$", b"]"));
        assert!(m(r"^\pL$", "é".as_bytes()));
        assert!(m(r"^\pl$", "é".as_bytes()), "canonicalName uppercases");
        assert!(m(r"^\PL$", b"1"));
        assert!(
            m(r"^\pC$", "\u{378}".as_bytes()),
            "Go's C includes unassigned"
        );
    }

    #[test]
    fn alternation_and_counted_repetition() {
        assert!(
            m("^a|b$", b"xb"),
            "a search: the second branch is not anchored"
        );
        assert!(m("^a|b$", b"ax"));
        assert!(!m("^a|b$", b"xa"));
        assert!(m("^x|$", b"anything"));
        assert!(m("^a{2}$", b"aa"));
        assert!(!m("^a{2}$", b"aaa"));
        assert!(m("^a{2,}$", b"aaaa"));
        assert!(m("^a{1,3}$", b"aaa"));
        assert!(!m("^a{1,3}$", b"aaaa"));
        assert!(m("^a{0}b$", b"b"));
        assert!(m("^a{,2}$", b"a{,2}"), "not a count: literal");
        assert!(m("^a{01}$", b"a{01}"), "leading zero: literal");
        assert!(bad("^a{1001}$"));
        assert!(bad("^a{3,1}$"));
        assert!(bad("^a*{2}$"));
        assert!(bad("^|{2}$"));
        assert!(matches!(
            Program::new(&"[^/]{1000}".repeat(60)),
            Err(SyntaxError::TooLarge)
        ));
    }

    #[test]
    fn go_syntax_errors() {
        for re in [
            "^[Local-Only]$",
            "^a[",
            r"^\1$",
            r"^\8$",
            r"^\é$",
            r"^\C$",
            r"^\p\{L\}$",
            r"^\pX$",
            "^[[:foo:]]$",
            "^[[:a]b:]]$",
            "^a**$",
            "*a",
            "^(a$",
            "^a)$",
            r"^\",
            r"^[\b]$",
            r"^\x4$",
            r"^[z-a]$",
        ] {
            assert!(bad(re), "{re} should be an error");
        }
        assert!(!bad("^a[^/]*$"));
        assert!(!bad("^x]$"));
        assert!(!bad("^*$"), "Go repeats an empty-width assertion");
    }

    #[test]
    fn invalid_utf8_input_is_one_replacement_rune_per_byte() {
        assert!(m("^a[^/]b$", b"a\xffb"));
        assert!(
            !m("^a[^/]b$", b"a\xe2\x82b"),
            "two invalid bytes are two runes"
        );
        assert!(m("^a[^/][^/]b$", b"a\xe2\x82b"));
        assert!(m("^a\u{FFFD}b$", b"a\xffb"));
        assert!(m("^a\u{FFFD}b$", "a\u{FFFD}b".as_bytes()));
        assert!(m("^a.b$", b"a\xc0b"));
        assert!(m("^a[^x]b$", "a€b".as_bytes()));
    }

    #[test]
    fn decode_matches_go() {
        assert_eq!(decode_rune(b"\xe2\x82\xac"), ('€', 3));
        assert_eq!(decode_rune(b"\xe2\x82"), (RUNE_ERROR, 1));
        assert_eq!(decode_rune(b"\xed\xa0\x80"), (RUNE_ERROR, 1), "surrogate");
        assert_eq!(decode_rune(b"\xc0\x80"), (RUNE_ERROR, 1), "overlong");
        assert_eq!(decode_last_rune(b"a\xe2\x82\xac"), ('€', 3));
        assert_eq!(decode_last_rune(b"a\x82\xac"), (RUNE_ERROR, 1));
        assert_eq!(decode_last_rune("a\u{3000}".as_bytes()), ('\u{3000}', 3));
    }

    #[test]
    fn matching_is_linear() {
        let prog = Program::new("^[^/]*a[^/]*a[^/]*a[^/]*a[^/]*a[^/]*a[^/]*a[^/]*b$").unwrap();
        let input = [b'a'; 64];
        let mut steps = 0;
        assert!(!prog.is_match(&input, &mut steps));
        let bound = (input.len() as u64 + 1) * 4 * prog.insts.len() as u64;
        assert!(steps <= bound, "{steps} steps > {bound}:\n{}", prog.dump());
    }
}
