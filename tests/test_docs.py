"""The README is a front door and the docs hold together: links resolve, pages are reachable.

Checked for README.md, CONTRIBUTING.md and every docs/*.md page:

- every relative link (``[text](path)``, ``![alt](path)``, ``<img src="path">`` and
  ``[label]: path`` definitions) names a file that exists, and an ``#anchor`` names a heading of
  the page it points to (GitHub's heading ids);
- the README has at most 260 lines, links every docs/ page (its map), and holds the test
  command that ``.ci/run`` runs.

Links inside fenced code blocks and inline code are not links and are skipped.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 260
TEST_COMMAND = (
    'python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 && .venv/bin/pip install -q -e ".[dev]"'
    " && .venv/bin/python -m pytest -q"
)

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
_MARKDOWN_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_IMG_SRC = re.compile(r"<img\b[^>]*\bsrc\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
_DEFINITION = re.compile(r"^\s{0,3}\[(?!\^)[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.MULTILINE)
_EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)


def doc_files() -> list[Path]:
    """The pages whose links are checked: README.md, CONTRIBUTING.md and docs/*.md."""
    files = [README, ROOT / "CONTRIBUTING.md", *sorted(DOCS.glob("*.md"))]
    return [path for path in files if path.exists()]


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code, where a link is not a link."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def links(text: str) -> list[str]:
    """Every link target written in the markdown ``text`` (code excluded), in order."""
    body = prose(text)
    found = []
    for pattern in (_MARKDOWN_LINK, _IMG_SRC, _DEFINITION):
        found.extend(match.group(1) for match in pattern.finditer(body))
    return found


def anchors(text: str) -> set[str]:
    """The heading ids GitHub gives the headings of ``text`` (duplicates get -1, -2, ...)."""
    seen: dict[str, int] = {}
    ids = set()
    for match in _HEADING.finditer(_FENCE.sub("", text)):
        title = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", match.group(2))  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", title.replace("`", "").lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        ids.add(slug if count == 0 else f"{slug}-{count}")
    return ids


def broken_links(page: Path) -> list[str]:
    """The relative links of ``page`` that do not resolve, each with the reason."""
    problems = []
    for target in links(page.read_text(encoding="utf-8")):
        if _EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            problems.append(f"{target}: no file {resolved}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text(encoding="utf-8")):
            problems.append(f"{target}: no heading #{anchor} in {resolved.name}")
    return problems


def test_the_checker_finds_links_and_skips_code():
    text = (
        "See [a](docs/a.md), ![b](img/b.png) and <img src='c.png' width=3>.\n"
        "[d]: docs/d.md\n"
        "Not a link: `[x](nowhere.md)`.\n"
        "```\n[y](nowhere-either.md)\n```\n"
        "[e](https://example.com) [f](#local)\n"
    )
    assert links(text) == ["docs/a.md", "img/b.png", "https://example.com", "#local", "c.png", "docs/d.md"]


def test_anchors_follow_github_ids():
    text = "# Title\n## Ray: local backend, 1 worker\n## Perplexity's `chance` level\n## Title\n"
    assert anchors(text) == {"title", "ray-local-backend-1-worker", "perplexitys-chance-level", "title-1"}


def test_a_broken_link_is_caught(tmp_path):
    (tmp_path / "real.md").write_text("# Real heading\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](real.md) [ok too](real.md#real-heading) [gone](missing.md) [bad anchor](real.md#nope)\n",
        encoding="utf-8",
    )
    problems = broken_links(page)
    assert len(problems) == 2, problems
    assert problems[0].startswith("missing.md") and problems[1].startswith("real.md#nope")


@pytest.mark.parametrize("page", doc_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert broken_links(page) == []


def test_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_every_docs_page_is_in_the_readme_map():
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in links(README.read_text("utf-8"))}
    pages = sorted(DOCS.glob("*.md"))
    assert pages, "no docs/*.md pages"
    missing = [page.name for page in pages if page.resolve() not in linked]
    assert missing == [], f"docs pages not linked from the README's map: {missing}"


def test_readme_holds_the_ci_test_command():
    assert TEST_COMMAND in README.read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for step in TEST_COMMAND.split(" && "):
        assert step in ci, step


def python_blocks(text: str) -> list[str]:
    """The fenced ```python blocks of ``text``."""
    return re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


@pytest.mark.slow
def test_readme_python_example_runs(capsys):
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) == 1, "the README has one Python example"
    exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme_example"})
    assert capsys.readouterr().out.strip(), "the example prints the accuracy"
