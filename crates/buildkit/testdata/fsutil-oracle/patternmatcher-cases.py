"""The pattern cases of ../patternmatcher-cases.jsonl (development tool).

    python3 patternmatcher-cases.py > ../patternmatcher-cases.input.json
    fsutil-oracle patterns < ../patternmatcher-cases.input.json > ../patternmatcher-cases.jsonl

patternmatcher_test.go's tables (with the expectations of that test where it has them) and the
corners fastbuild got wrong before; the oracle adds Go's answers.
"""
import json, sys
cases = []
def b(s):
    if isinstance(s, bytes):
        try:
            return s.decode('utf-8')
        except UnicodeDecodeError:
            return {"hex": s.hex()}
    return s
def case(name, patterns, paths, go_test_pass=None):
    c = {"name": name, "patterns": [b(p) for p in patterns], "paths": [b(p) for p in paths]}
    if go_test_pass is not None:
        c["go_test_pass"] = go_test_pass
    cases.append(c)

# patternmatcher_test.go TestMatches: tests (pattern, text, pass)
tests = [
("**", "file", True), ("**", "file/", True), ("**/", "file", True), ("**/", "file/", True),
("**", "/", True), ("**/", "/", True), ("**", "dir/file", True), ("**/", "dir/file", True),
("**", "dir/file/", True), ("**/", "dir/file/", True), ("**/**", "dir/file", True),
("**/**", "dir/file/", True), ("dir/**", "dir/file", True), ("dir/**", "dir/file/", True),
("dir/**", "dir/dir2/file", True), ("dir/**", "dir/dir2/file/", True), ("**/dir", "dir", True),
("**/dir", "dir/file", True), ("**/dir2/*", "dir/dir2/file", True), ("**/dir2/*", "dir/dir2/file/", True),
("**/dir2/**", "dir/dir2/dir3/file", True), ("**/dir2/**", "dir/dir2/dir3/file/", True),
("**file", "file", True), ("**file", "dir/file", True), ("**/file", "dir/file", True),
("**file", "dir/dir/file", True), ("**/file", "dir/dir/file", True), ("**/file*", "dir/dir/file", True),
("**/file*", "dir/dir/file.txt", True), ("**/file*txt", "dir/dir/file.txt", True),
("**/file*.txt", "dir/dir/file.txt", True), ("**/file*.txt*", "dir/dir/file.txt", True),
("**/**/*.txt", "dir/dir/file.txt", True), ("**/**/*.txt2", "dir/dir/file.txt", False),
("**/*.txt", "file.txt", True), ("**/**/*.txt", "file.txt", True), ("a**/*.txt", "a/file.txt", True),
("a**/*.txt", "a/dir/file.txt", True), ("a**/*.txt", "a/dir/dir/file.txt", True),
("a/*.txt", "a/dir/file.txt", False), ("a/*.txt", "a/file.txt", True), ("a/*.txt**", "a/file.txt", True),
("a[b-d]e", "ae", False), ("a[b-d]e", "ace", True), ("a[b-d]e", "aae", False), ("a[^b-d]e", "aze", True),
(".*", ".foo", True), (".*", "foo", False), ("abc.def", "abcdef", False), ("abc.def", "abc.def", True),
("abc.def", "abcZdef", False), ("abc?def", "abcZdef", True), ("abc?def", "abcdef", False),
("a\\\\", "a\\", True), ("**/foo/bar", "foo/bar", True), ("**/foo/bar", "dir/foo/bar", True),
("**/foo/bar", "dir/dir2/foo/bar", True), ("abc/**", "abc", False), ("abc/**", "abc/def", True),
("abc/**", "abc/def/ghi", True), ("**/.foo", ".foo", True), ("**/.foo", "bar.foo", False),
("a(b)c/def", "a(b)c/def", True), ("a(b)c/def", "a(b)c/xyz", False), ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
("dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
("a\\*b", "a*b", True),
]
for i, (p, t, ok) in enumerate(tests):
    case(f"TestMatches/{i}", [p], [t], ok)
multi = [
(["**", "!util/docker/web"], "util/docker/web/foo", False),
(["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
(["**", "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
(["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
]
for i, (ps, t, ok) in enumerate(multi):
    case(f"TestMatches/multi/{i}", ps, [t], ok)
# Simple tests (via the deprecated Matches; results here are for the current functions).
case("TestWildcardMatches", ["*"], ["fileutils.go"], True)
case("TestPatternMatches", ["*.go"], ["fileutils.go"], True)
case("TestExclusionPatternMatchesPatternBefore", ["!fileutils.go", "*.go"], ["fileutils.go"], True)
case("TestPatternMatchesFolderExclusions", ["docs", "!docs/README.md"], ["docs/README.md"], False)
case("TestPatternMatchesFolderWithSlashExclusions", ["docs/", "!docs/README.md"], ["docs/README.md"], False)
case("TestPatternMatchesFolderWildcardExclusions", ["docs/*", "!docs/README.md"], ["docs/README.md"], False)
case("TestExclusionPatternMatchesPatternAfter", ["*.go", "!fileutils.go"], ["fileutils.go"], False)
case("TestSingleExclamationError", ["!"], ["fileutils.go"])
case("TestMatchesWithNoPatterns", [], ["/any/path/there"], False)
case("TestMatchesWithMalformedPatterns", ["["], ["/any/path/there"])
case("TestCleanPatternsStripEmptyPatterns", ["docs", "config", ""], ["docs/x", "config", "other"])
case("TestCleanPatternsLeadingSpaceTrimmed", ["docs", "  !docs/README.md"], ["docs/README.md", "docs/x"])
case("TestCleanPatternsTrailingSpaceTrimmed", ["docs", "!docs/README.md  "], ["docs/README.md", "docs/x"])
case("TestMatchesOrParentMatchesMalformedPatternDoesNotPanicOnRepeatedCall", ["[Local-Only]/"], ["x", "x"])
# matchTests (filepath.Match's table as patternmatcher_test.go carries it): (pattern, s, match, err)
match_tests = [
("abc", "abc", True, False), ("*", "abc", True, False), ("*c", "abc", True, False), ("a*", "a", True, False),
("a*", "abc", True, False), ("a*", "ab/c", True, False), ("a*/b", "abc/b", True, False), ("a*/b", "a/c/b", False, False),
("a*b*c*d*e*/f", "axbxcxdxe/f", True, False), ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True, False),
("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False, False), ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False, False),
("a*b?c*x", "abxbbxdbxebxczzx", True, False), ("a*b?c*x", "abxbbxdbxebxczzy", False, False),
("ab[c]", "abc", True, False), ("ab[b-d]", "abc", True, False), ("ab[e-g]", "abc", False, False),
("ab[^c]", "abc", False, False), ("ab[^b-d]", "abc", False, False), ("ab[^e-g]", "abc", True, False),
("a\\*b", "a*b", True, False), ("a\\*b", "ab", False, False), ("a?b", "a☺b", True, False),
("a[^a]b", "a☺b", True, False), ("a???b", "a☺b", False, False), ("a[^a][^a][^a]b", "a☺b", False, False),
("[a-ζ]*", "α", True, False), ("*[a-ζ]", "A", False, False), ("a?b", "a/b", False, False), ("a*b", "a/b", False, False),
("[\\]a]", "]", True, False), ("[\\-]", "-", True, False), ("[x\\-]", "x", True, False), ("[x\\-]", "-", True, False),
("[x\\-]", "z", False, False), ("[\\-x]", "x", True, False), ("[\\-x]", "-", True, False), ("[\\-x]", "a", False, False),
("[]a]", "]", False, True), ("[-]", "-", False, True), ("[x-]", "x", False, True), ("[x-]", "-", False, True),
("[x-]", "z", False, True), ("[-x]", "x", False, True), ("[-x]", "-", False, True), ("[-x]", "a", False, True),
("\\", "a", False, True), ("[a-b-c]", "a", False, True), ("[", "a", False, True), ("[^", "a", False, True),
("[^bc", "a", False, True), ("a[", "a", False, True), ("a[", "ab", False, True), ("*x", "xxx", True, False),
]
for i, (p, s, m, e) in enumerate(match_tests):
    case(f"matchTests/{i}" + ("/err" if e else ""), [p], [s], m)
# compileTests patterns, matched against a few paths.
for p in ["*", "file*", "*file", "a*/b", "**", "**/**", "dir/**", "**/dir", "**/dir2/*", "**/dir2/**", "**file",
          "**/file*txt", "**/**/*.txt", "a[b-d]e", ".*", "abc.def", "abc?def", "**/foo/bar", "a(b)c/def", "a.|)$(}+{bc"]:
    case(f"compileTests/{p}", [p], ["file", "dir/file", "a/b", "dir/dir2/x", "x/dir2/y/z", "abc.def", "ace", ".x", "foo/bar", "a(b)c/def", "a.|)$(}+{bc"])

# Divergences from the old matcher and Go-specific corners.
case("escaped brackets match literally", ["app/\\[slug\\]"], ["app/[slug]", "app/s", "app/[slug]/page.tsx"])
case("escaped exception re-includes [keep]", ["*", "!\\[keep\\]"], ["[keep]", "k", "other"])
case("bare ] is a literal", ["a]", "]"], ["a]", "]", "a", "]/x"])
case("class errors as filepath.Match", ["[]a]"], ["]"])
case("class errors [-]", ["[-]"], ["-"])
case("class errors [x-]", ["[x-]"], ["x"])
case("class errors [-x]", ["[-x]"], ["x"])
case("class errors [a-b-c]", ["[a-b-c]"], ["a"])
case("trailing backslash", ["a\\"], ["a\\"])
case("negated class matches slash", ["a[^x]b"], ["a/b", "axb", "ayb", "a/b/c"])
case("class with slash", ["a[/]b"], ["a/b"])
case("posix class", ["[[:alpha:]]*"], ["abc", "1bc", "a/b"])
case("unknown posix class is a match-time error", ["x", "[[:foo:]]"], ["x", "y"])
case("backslash d is a digit class", ["a\\d"], ["a1", "ad"])
case("backslash Q quotes", ["\\Qa*b"], ["a[^/]*b$", "a[^/]*b$x", "ab", "axb"])
case("caret is an anchor in regexps", ["^a*", "b^c"], ["a", "^a", "b^c", "ab"])
case("star bracket swallows class", ["[a*]"], ["a", "]", "aa]", "[]", "a[^/]"])
case("star in class 2", ["[*]x", "y[?]"], ["[x", "]x", "*x", "y?", "y[]", "y/]"])
case("later chunks are not checked at New", ["a*["], ["a", "ab", "a["])
case("only the first failing chunk is checked", ["x*[", "abc"], ["abc", "x"])
case("exception with regexp error is only an error when evaluated", ["a", "!b*["], ["c", "a", "a/x"])
case("unicode class", ["\\pL*"], ["ébc", "1bc"])
case("bad escapes", ["a\\é"], ["aé"])
case("bad escapes 2", ["\\1"], ["1"])
case("hex escape", ["\\x41*"], ["ABC", "x41"])
case("octal escape", ["\\101"], ["A", "101"])
case("word boundary", ["a\\b*"], ["a", "a.b", "ab"])
case("newline in names", ["a/**/b", "c*", "**/d", "e/**"], ["a/x\ny/b", "a/x/b", "c\nx", "q\n/d", "e/x\ny"])
case("triple star", ["***"], ["x", "a/b", "x*", "a/x*"])
case("star star letter", ["**a"], ["a", "ba", "x/ba", "ab"])
case("star star slash", ["**/"], ["a", "a/b"])
case("bang cleaned away", ["!a/../b"], ["b", "a"])
case("leading slash kept by New", ["/abs", "!/abs/keep"], ["abs", "/abs", "abs/keep"])
case("dot patterns", [".", "./x/", "x/./y/../z"], [".", "x", "x/z", "y"])
case("double dot pattern", ["../x", ".."], ["../x", "x", ".."])
case("bom skipped by the scanner", ["\ufeff**/x*", "\ufeffa*"], ["x", "a/x1", "ab", "\ufeffab"])
case("bom exact", ["\ufeffx"], ["x", "\ufeffx"])
case("unicode spaces trimmed", ["\u3000docs\u00a0", "\u0085!keep"], ["docs", "keep", "docs/keep"])
case("non-UTF-8 path and star", ["*"], [b"\xff", b"a\xff/b"])
case("non-UTF-8 question mark", ["a?b", "c??d"], [b"a\xffb", b"a\xe2\x82b", b"c\xe2\x82d", "a€b"])
case("non-UTF-8 exact pattern", [b"x\xff"], [b"x\xff", b"x\xfe"])
case("non-UTF-8 regexp pattern is U+FFFD", [b"x\xff*"], [b"x\xfe", b"x\xffy", "x\ufffd", b"x\xe2\x82"])
case("non-UTF-8 class", ["[^a]", "[\\x{FFFD}]"], [b"\xff", "b"])
case("non-UTF-8 suffix", [b"**/\xff"], [b"a/\xff", b"\xff", b"a/\xfe"])
case("non-UTF-8 prefix", [b"\xff/**"], [b"\xff/a", b"\xff"])
case("markdown and docs", ["**/*.md", "!docs"], ["docs", "docs/a.md", "a.md", "docs/x/b.md", "x/docs/a.md"])
case("docs then markdown", ["docs", "!**/*.md"], ["docs", "docs/a.md", "docs/a.txt"])
case("exception skipped at parent", ["a", "!a/b", "a/b/c"], ["a", "a/b", "a/b/c", "a/b/d", "a/x"])
case("exceptions of exceptions", ["**", "!keep", "keep/drop", "!keep/drop/again"], ["keep/x", "keep/drop/y", "keep/drop/again/z", "other"])
case("parent match of inclusion", ["a/*"], ["a/b/c", "a", "a/b"])
case("node modules", ["node_modules", "!node_modules/keep"], ["node_modules/x", "node_modules/keep", "node_modules/keep/inner"])
case("M3 pathological", ["*a*a*a*a*a*a*a*b"], ["a" * 64, "a" * 63 + "b"])
case("class ranges", ["[Local-Only]/", "[a-z]x", "[z-a]"], ["Lx", "bx"])
case("escaped slash and dot", ["a\\/b", "a\\.b"], ["a/b", "a.b", "axb"])
case("escaped space and bang", ["\\!a", "a\\ b"], ["!a", "a b"])
case("bar is alternation (patternmatcher does not escape it)", ["a*|b"], ["a", "ax", "b", "xb", "x", "a/b"])
case("bar in an exact pattern is literal", ["a|b"], ["a|b", "a", "b"])
case("bar makes everything match", ["[^a]w/+d|"], ["?", "anything/at/all"])
case("braces count", ["a?{2}", "b{2,}*", "c{1,3}"], ["axx", "ax", "bb", "bbb", "b", "c", "cc", "cccc", "c{1,3}"])
case("braces that do not count are literal", ["x{,2}*", "y{01}?", "z{"], ["x{,2}", "y{01}a", "z{"])
case("brace counts over 1000 are a match-time error", ["a*{1001}"], ["a"])
case("nested repetition is a match-time error", ["a*{2}", "**/{2}"], ["a", "b"])
case("alternation with anchors", ["x?|^y", "\\A*|\\z"], ["xa", "y", "zy", "q"])
print(json.dumps(cases, ensure_ascii=False, indent=0))
