"""README.md and docs/: every relative link and image resolves, every ``#anchor`` is a heading of
the page it points into, every docs page is reachable from the README, and the README stays short.

Links are read as GitHub renders them: Markdown links and images, reference definitions and HTML
``href``/``src``, outside fenced code blocks and inline code; anchors are GitHub's heading slugs.
"""
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_BYTES = 15_000  # issue #22: the README of a project users know is 8-14 KB
# issue #22: one page per topic; more pages may come, these must stay
TOPICS = ["search-space", "presets", "results", "reliability", "shipping", "multi-objective", "pbt",
          "contrastive", "cluster", "data", "console"]

FENCE = re.compile(r"^\s{0,3}(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK_TARGETS = [
    re.compile(r"\]\(\s*<([^>]*)>[^)]*\)"),                       # [text](<target with spaces>)
    re.compile(r"\]\(\s*([^)\s<]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)"),  # [text](target "title")
    re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?([^\s>]+)", re.M),        # [ref]: target
    re.compile(r"\b(?:href|src)\s*=\s*\"([^\"]*)\""),             # <a href="..."> <img src="...">
]
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)\s*=\s*\"([^\"]+)\"")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (code blocks are blanked, so line numbers hold)."""
    lines, in_fence = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            lines.append("")
        else:
            lines.append("" if in_fence else line)
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lower-cased, punctuation other than `-`
    and `_` dropped, each space a `-` (`## Run on a cluster` -> `run-on-a-cluster`)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text, not its target
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a Markdown page offers: its headings' slugs (a repeated slug gets -1, -2, ...,
    as on GitHub) and explicit `<a name=...>`/`<a id=...>`."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(path.read_text(encoding="utf-8")):
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link and image in a Markdown page, outside code."""
    result = []
    for number, line in enumerate(prose_lines(path.read_text(encoding="utf-8")), start=1):
        line = INLINE_CODE.sub("", line)
        for pattern in LINK_TARGETS:
            result += [(number, target) for target in pattern.findall(line)]
    return result


def broken_links(page: Path, root: Path) -> list[str]:
    """Each relative link of ``page`` that leads nowhere: a file or folder that does not exist
    (or lies outside ``root``, which GitHub cannot show), or an #anchor its Markdown target lacks."""
    broken = []
    for number, target in links(page):
        if SCHEME.match(target):  # http(s), mailto, ...: not checked here (no internet)
            continue
        where = f"{page.relative_to(root)}:{number}: {target}"
        file_part, _, anchor = target.partition("#")
        file_part = unquote(file_part)
        if file_part.startswith("/"):
            broken.append(f"{where} (an absolute path: write it relative to {page.name})")
            continue
        resolved = (page.parent / file_part).resolve() if file_part else page.resolve()
        if not resolved.is_relative_to(root.resolve()) or not resolved.exists():
            broken.append(f"{where} (no such file or folder: {file_part})")
        elif anchor and resolved.suffix.lower() != ".md":
            broken.append(f"{where} (an #anchor into a file that is not Markdown)")
        elif anchor and unquote(anchor) not in anchors(resolved):
            broken.append(f"{where} (no heading with the anchor #{anchor} in {resolved.name})")
    return broken


def docs_pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


# --------------------------------------------------------------------------- the checker itself
@pytest.mark.parametrize("heading, slug", [
    ("Run on a cluster", "run-on-a-cluster"),
    ("What tunebert unpickles, and what you must protect", "what-tunebert-unpickles-and-what-you-must-protect"),
    ("The study's table at its own lengths", "the-studys-table-at-its-own-lengths"),
    ("Population Based Training: `--scheduler pbt` (and `pb2`)",
     "population-based-training---scheduler-pbt-and-pb2"),
    ("Results on MASSIVE (2 CPU cores, no GPU)", "results-on-massive-2-cpu-cores-no-gpu"),
    ("The `head_hidden` knob, see [docs](x.md)", "the-head_hidden-knob-see-docs"),
])
def test_slugs_are_githubs(heading, slug):
    assert github_slug(heading) == slug


def test_the_checker_reports_broken_files_and_anchors_and_nothing_else(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "fig.png").write_bytes(b"png")
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## Two words: `x`\n\n## Two words: `x`\n")
    page = tmp_path / "README.md"
    page.write_text("\n".join([
        "# Title",
        "[ok](docs/other.md) [ok anchor](docs/other.md#two-words-x) [ok repeat](docs/other.md#two-words-x-1)",
        "![ok image](img/fig.png) [ok folder](img/) [ok here](#title) [web](https://example.org/x.md)",
        "[missing file](docs/gone.md)",
        "[missing anchor](docs/other.md#three-words)",
        "![missing image](img/nope.png) and `[in code](nowhere.md)`",
        "```",
        "[in a code block](nowhere.md)",
        "```",
        "[outside the repository](../elsewhere.md) [missing here](#no-such-heading)",
        "[ref]: docs/missing-ref.md",
    ]))
    broken = broken_links(page, tmp_path)
    assert [b.split(" (")[0] for b in broken] == [
        "README.md:4: docs/gone.md",
        "README.md:5: docs/other.md#three-words",
        "README.md:6: img/nope.png",
        "README.md:10: ../elsewhere.md",
        "README.md:10: #no-such-heading",
        "README.md:11: docs/missing-ref.md",
    ]
    assert "no heading with the anchor #three-words in other.md" in broken[1]


# --------------------------------------------------------------------------- the real pages
def test_readme_is_at_most_15_kb():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes, over {README_MAX_BYTES}: move the detail to a page in docs/ "
        "and link it from the README's list")


@pytest.mark.parametrize("page", [README, *docs_pages()], ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    assert not broken_links(page, REPO), "broken links:\n" + "\n".join(broken_links(page, REPO))


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / unquote(t.partition("#")[0])).resolve()
              for _, t in links(README) if not SCHEME.match(t)}
    unlinked = [p.name for p in docs_pages() if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link to (add them to its list): {unlinked}"


def test_docs_has_a_page_per_topic():
    missing = [t for t in TOPICS if not (DOCS / f"{t}.md").is_file()]
    assert not missing, f"docs/ lacks the pages {missing} (issue #22 names one page per topic)"


def test_quickstart_first_block_is_the_two_lines_ci_runs():
    block = re.search(r"^## Quickstart\n+```bash\n(.*?)^```", README.read_text(), flags=re.S | re.M)
    assert block, "README.md lost its Quickstart's bash block"
    lines = block.group(1).splitlines()
    assert len(lines) == 2, f"the Quickstart's first block must be two lines, not {len(lines)}"
    assert lines[1] in (REPO / ".ci" / "run").read_text().splitlines(), (
        "the Quickstart's line 2 is no longer the line .ci/run runs: change both together")
