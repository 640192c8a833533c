use super::*;

/// Cases with Go's answers, produced by `testdata/fsutil-oracle` (`fsutil-oracle patterns <
/// patternmatcher-cases.input.json`, the input made by `patternmatcher-cases.py`) from
/// moby/patternmatcher v0.6.1 built with Go 1.26.8 (as buildctl v0.32.2 here): the
/// tables of patternmatcher_test.go (`TestMatches`, its multi-pattern table, `matchTests`,
/// `compileTests`, the single-case tests) and the corners fastbuild got wrong before.
const CASES: &str = include_str!("../../testdata/patternmatcher-cases.jsonl");

fn bytes_of(v: &serde_json::Value) -> Vec<u8> {
    match v {
        serde_json::Value::String(s) => s.as_bytes().to_vec(),
        serde_json::Value::Object(o) => {
            let hex = o["hex"].as_str().unwrap();
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect()
        }
        other => panic!("not a byte string: {other}"),
    }
}

fn outcome(r: &Result<bool, MatchError>) -> serde_json::Value {
    match r {
        Ok(b) => serde_json::Value::Bool(*b),
        Err(_) => serde_json::Value::String("error".into()),
    }
}

/// What fsutil's walker computes for `path`: every level with its parent's results.
fn walk_levels(pm: &PatternMatcher, path: &[u8]) -> Result<bool, MatchError> {
    let mut info = MatchInfo::default();
    let mut matched = false;
    let parts: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    for i in 0..parts.len() {
        let prefix = parts[..=i].join(&b'/');
        let (m, next) = pm.matches_using_parent_results(&prefix, &info)?;
        matched = m;
        info = next;
    }
    Ok(matched)
}

/// 1200 random cases (`fsutil-oracle/patternmatcher-fuzz.py 2026 1200`) with Go's answers:
/// Go regexp corners (`|`, `{n,m}`, escapes, classes) and invalid UTF-8.
const FUZZ: &str = include_str!("../../testdata/patternmatcher-fuzz.jsonl");

#[test]
fn go_patternmatcher_cases() {
    let checked = check_cases(CASES);
    assert!(checked > 300, "only {checked} paths checked");
}

#[test]
fn go_patternmatcher_random_cases() {
    let checked = check_cases(FUZZ);
    assert!(checked > 5000, "only {checked} paths checked");
}

/// Same check on a file of cases made with the oracle, e.g. random ones:
/// `FSUTIL_PATTERN_CASES=/tmp/fuzz.jsonl cargo test -p fastbuild-buildkit --lib
/// pattern_cases_from_file -- --ignored`.
#[test]
#[ignore = "development tool: needs FSUTIL_PATTERN_CASES"]
fn pattern_cases_from_file() {
    let path = std::env::var("FSUTIL_PATTERN_CASES").unwrap();
    check_cases(&std::fs::read_to_string(path).unwrap());
}

fn check_cases(cases: &str) -> usize {
    let mut checked = 0;
    for line in cases.lines() {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        let name = case["name"].as_str().unwrap();
        let patterns: Vec<Vec<u8>> = case["patterns"]
            .as_array()
            .unwrap()
            .iter()
            .map(bytes_of)
            .collect();
        let pm = PatternMatcher::new(&patterns);
        assert_eq!(
            pm.is_err(),
            case["new_err"].as_bool().unwrap(),
            "{name}: New error: {pm:?}"
        );
        if name.starts_with("matchTests/") {
            assert_eq!(pm.is_err(), name.ends_with("/err"), "{name}");
        }
        let Ok(pm) = pm else { continue };
        for result in case["results"].as_array().unwrap() {
            let path = bytes_of(&result["path"]);
            let shown = String::from_utf8_lossy(&path);
            assert_eq!(
                outcome(&pm.matches_or_parent_matches(&path)),
                result["or_parent"],
                "{name}: MatchesOrParentMatches({shown:?})"
            );
            assert_eq!(
                outcome(&walk_levels(&pm, &path)),
                result["parent_results"],
                "{name}: MatchesUsingParentResults({shown:?})"
            );
            if name.starts_with("TestMatches/") {
                let pass = &case["go_test_pass"];
                assert_eq!(&result["or_parent"], pass, "{name}: Go's own expectation");
                assert_eq!(
                    &result["parent_results"], pass,
                    "{name}: Go's own expectation"
                );
            }
            checked += 1;
        }
    }
    checked
}

fn kind(p: &str) -> (String, String) {
    let pm = PatternMatcher::new([p]).unwrap();
    match &pm.patterns()[0].kind {
        Kind::Exact => ("exact".into(), String::new()),
        Kind::Prefix => ("prefix".into(), String::new()),
        Kind::Suffix => ("suffix".into(), String::new()),
        Kind::Regexp { source, .. } => ("regexp".into(), source.clone()),
    }
}

/// patternmatcher_test.go `compileTests` (slash separator): match kind and Go expression.
#[test]
fn compile_tests_table() {
    // One pattern a line: the pattern, its kind and, for a regexp, Go's expression. The last
    // four are not in Go's table: escapes and classes are copied into the expression.
    let table = r"
*                                                       regexp  ^[^/]*$
file*                                                   regexp  ^file[^/]*$
*file                                                   regexp  ^[^/]*file$
a*/b                                                    regexp  ^a[^/]*/b$
**                                                      suffix
**/**                                                   regexp  ^(.*/)?.*$
dir/**                                                  prefix
**/dir                                                  suffix
**/dir2/*                                               regexp  ^(.*/)?dir2/[^/]*$
**/dir2/**                                              regexp  ^(.*/)?dir2/.*$
**file                                                  suffix
**/file*txt                                             regexp  ^(.*/)?file[^/]*txt$
**/**/*.txt                                             regexp  ^(.*/)?(.*/)?[^/]*\.txt$
a[b-d]e                                                 regexp  ^a[b-d]e$
.*                                                      regexp  ^\.[^/]*$
abc.def                                                 exact
abc?def                                                 regexp  ^abc[^/]def$
**/foo/bar                                              suffix
a(b)c/def                                               exact
a.|)$(}+{bc                                             exact
dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl  exact
app/\[slug\]                                            regexp  ^app/\[slug\]$
[a*]                                                    regexp  ^[a[^/]*]$
a]                                                      regexp  ^a]$
a^b                                                     exact
";
    for row in table.lines().skip(1) {
        let mut columns = row.split_whitespace();
        let pattern = columns.next().unwrap();
        let want_kind = columns.next().unwrap();
        let want_re = columns.next().unwrap_or_default();
        assert_eq!(
            kind(pattern),
            (want_kind.into(), want_re.into()),
            "{pattern}"
        );
    }
}

#[test]
fn walker_level_results_for_markdown_then_docs_exception() {
    // `**/*.md` then `!docs`: docker excludes docs/a.md (the exception is skipped for `docs`,
    // where nothing matched yet, and does not match `docs/a.md` itself).
    let pm = PatternMatcher::new(["**/*.md", "!docs"]).unwrap();
    let (docs, info) = pm
        .matches_using_parent_results(b"docs", &MatchInfo::default())
        .unwrap();
    assert!(!docs);
    let (md, _) = pm
        .matches_using_parent_results(b"docs/a.md", &info)
        .unwrap();
    assert!(md);
    assert!(pm.matches("docs/a.md"));
    assert!(!pm.matches_or_parent_matches(b"docs/a.md").unwrap());
}

#[test]
fn pathological_pattern_is_linear() {
    // M3 of the hardening issue: 27.5 s per match with the old backtracking matcher.
    let pm = PatternMatcher::new(["*a*a*a*a*a*a*a*b"]).unwrap();
    let path = [b'a'; 64];
    let mut steps = 0;
    let (m, _) = pm
        .using_parent_results(&path, &MatchInfo::default(), &mut steps)
        .unwrap();
    assert!(!m);
    // 16 tokens, 64 bytes: a few thousand steps, not 64^7.
    assert!(steps < 20_000, "{steps} steps");
    let start = std::time::Instant::now();
    for _ in 0..1000 {
        assert!(!pm.matches(path));
    }
    assert!(start.elapsed().as_secs() < 10, "{:?}", start.elapsed());
}

/// The fuzzer's reproducers against the old backtracking matcher (each over 30 s for one
/// match): stacked `**/` and a longer `*a` chain.
#[test]
fn fuzzer_reproducers_are_linear() {
    let cases: [(&str, Vec<u8>); 2] = [
        (
            "**/**/**/**/**/**/**/**/**/**/x",
            [&b"a/".repeat(36)[..], b"y"].concat(),
        ),
        ("*a*a*a*a*a*a*a*a*a*a*b", vec![b'a'; 40]),
    ];
    for (pattern, path) in cases {
        let pm = PatternMatcher::new([pattern]).unwrap();
        let mut steps = 0;
        let (m, _) = pm
            .using_parent_results(&path, &MatchInfo::default(), &mut steps)
            .unwrap();
        assert!(!m, "{pattern}");
        assert!(steps < 200_000, "{pattern}: {steps} steps");
    }
}

#[test]
fn huge_patterns_are_refused_clearly() {
    let line = "*".repeat(2 << 20);
    let err = PatternMatcher::new([&line]).unwrap_err();
    assert!(matches!(err, PatternError::TooLong { len, .. } if len == 2 << 20));
    assert!(err.to_string().contains("4096"), "{err}");
    // The largest accepted pattern still matches in bounded time and without recursion.
    let line = "*".repeat(MAX_PATTERN_LEN);
    let pm = PatternMatcher::new([&line]).unwrap();
    assert!(pm.matches("a/b"));
    let line = "*a".repeat(MAX_PATTERN_LEN / 2);
    let pm = PatternMatcher::new([&line]).unwrap();
    assert!(!pm.matches("a".repeat(1000)));
    // Counted repetitions are bounded by the program size, not only the pattern length.
    let line = "?{1000}".repeat(60);
    let err = PatternMatcher::new([&line]).unwrap_err();
    assert!(matches!(err, PatternError::TooComplex(_)), "{err}");
    let many = vec!["x"; MAX_PATTERNS + 1];
    assert!(matches!(
        PatternMatcher::new(many),
        Err(PatternError::TooMany(_))
    ));
}

#[test]
fn bad_regexp_fails_every_evaluation() {
    // patternmatcher_test.go TestMatchesOrParentMatchesMalformedPatternDoesNotPanicOnRepeatedCall
    let pm = PatternMatcher::new(["[Local-Only]/"]).unwrap();
    for _ in 0..2 {
        let err = pm.matches_or_parent_matches(b"x").unwrap_err();
        assert!(err.to_string().contains("[Local-Only]"), "{err}");
    }
    assert!(
        !pm.matches("x"),
        "the convenience form answers `not excluded`"
    );
}

#[test]
fn glob_match_is_go_filepath_match() {
    let ok = |p: &str, n: &str| glob_match(p.as_bytes(), n.as_bytes()).unwrap();
    assert!(ok("*.rs", "main.rs"));
    assert!(!ok("*.rs", "a/main.rs"));
    assert!(ok("a?c", "a☺c"));
    assert!(ok("[\\]a]", "]"));
    assert!(!ok("\\d", "1"), "filepath.Match has no \\d");
    assert!(ok("\\d", "d"));
    assert!(glob_match(b"[]a]", b"]").is_err());
    assert!(glob_match(b"a[", b"a").is_err());
    // Go 1.26 stops checking at the first chunk that fails.
    assert!(!glob_match(b"x*[", b".").unwrap());
    assert!(glob_match(b"\\", b"a").is_err());
}

#[test]
fn trim_and_clean() {
    assert_eq!(trim_space("\u{3000} a b\u{a0}\n".as_bytes()), b"a b");
    assert_eq!(trim_space(b"\xff "), b"\xff");
    assert_eq!(
        trim_space(b" \x85"),
        b"\x85",
        "a lone 0x85 byte is not U+0085"
    );
    assert_eq!(clean_path("a//b/./c/.."), "a/b");
    assert_eq!(clean_path("/../a"), "/a");
    assert_eq!(clean_path("../a"), "../a");
    assert_eq!(clean_path(""), ".");
    assert_eq!(clean_path("./"), ".");
    assert_eq!(clean_path_bytes(b"a/\xff/../b"), b"a/b");
    assert_eq!(dir(b"a/b/c"), b"a/b");
    assert_eq!(dir(b"a"), b".");
    assert_eq!(dir(b"/a"), b"/");
}

#[test]
fn dockerignore_parsing() {
    let content = "\u{feff}# comment\n  *.log  \n\n/abs/path\n! keep.log\n#nope\n dir/./sub/ \n!/root/x\n  # not a comment\r\n";
    assert_eq!(
        parse_dockerignore(content),
        vec![
            "*.log",
            "abs/path",
            "!keep.log",
            "dir/sub",
            "!root/x",
            "# not a comment"
        ]
    );
    let pm = PatternMatcher::new(parse_dockerignore(content)).unwrap();
    assert!(pm.matches("a.log"));
    assert!(!pm.matches("keep.log"));
    assert!(pm.matches("abs/path/file"));
    assert_eq!(
        parse_dockerignore_bytes(b"caf\xe9/*\n!x\xff"),
        vec![b"caf\xe9/*".to_vec(), b"!x\xff".to_vec()]
    );
}
