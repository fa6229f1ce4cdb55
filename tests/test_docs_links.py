"""The docs' cross-references resolve: every relative link and `#anchor` in README.md and docs/,
and every `docs/<file>.md, "<section>"` that code, configs, scripts and docs cite.

Anchors follow GitHub's rule: the heading lowercased, punctuation other than `-` and `_`
dropped, spaces turned into `-`; a repeated heading gets `-1`, `-2`, ... A cited section is a
heading of that file or the start of one (`"Checkpoints"` for "Checkpoints, workdir lock and
errors").
"""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CITATION = re.compile(r"(?<![\w./])docs/([\w./-]+?\.md)(?:,?\s*\\?\"([^\"\\]+)\\?\")?")
CITING_SUFFIXES = (".py", ".sh", ".md", ".cfg", ".txt")
SKIPPED_DIRS = ("workdirs", "build", "dist", "__pycache__")


def _outside_code_fences(text):
  """The lines of a markdown text that are not inside ``` fences."""
  lines, fenced = [], False
  for line in text.split("\n"):
    if line.lstrip().startswith("```"):
      fenced = not fenced
    elif not fenced:
      lines.append(line)
  return lines


def _headings(text):
  return [line.lstrip("#").strip() for line in _outside_code_fences(text)
          if re.match(r"#{1,6} ", line)]


def _anchors(text):
  """GitHub's anchors of a markdown text's headings."""
  anchors, seen = set(), {}
  for heading in _headings(text):
    slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
    anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
    seen[slug] = seen.get(slug, 0) + 1
  return anchors


def _normalised_title(title):
  return re.sub(r"\s+", " ", title.replace("`", "")).strip().lower()


def markdown_files(root):
  docs = root / "docs"
  return [root / "README.md", *(sorted(docs.rglob("*.md")) if docs.is_dir() else [])]


def broken_links(root):
  """'file: target (why)' for every relative link or anchor that does not resolve."""
  problems = []
  for md in markdown_files(root):
    # A link's text may wrap over lines; code spans (which may wrap too) hold no links.
    text = re.sub(r"`[^`]*`", "", "\n".join(_outside_code_fences(md.read_text(encoding="utf-8"))))
    for target in LINK.findall(text):
      if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
        continue
      path, _, anchor = target.partition("#")
      dest = (md.parent / path).resolve() if path else md
      where = f"{md.relative_to(root)}: {target}"
      if not dest.exists():
        problems.append(f"{where} (no such file)")
      elif anchor and (dest.suffix != ".md"
                       or anchor not in _anchors(dest.read_text(encoding="utf-8"))):
        problems.append(f"{where} (no heading with that anchor)")
  return problems


def _citing_files(root):
  """The repository's text files (this one aside: its examples cite files that do not exist)."""
  this_file = pathlib.Path(__file__).resolve()
  for path in sorted(root.rglob("*")):
    parts = path.relative_to(root).parts
    if (path.is_file() and path.suffix in CITING_SUFFIXES and path.resolve() != this_file
        and not any(p.startswith(".") or p in SKIPPED_DIRS or p.endswith(".egg-info")
                    for p in parts)):
      yield path
  ci = root / ".ci" / "run"
  if ci.is_file():
    yield ci


def broken_citations(root):
  """'file: docs/X.md "Section" (why)' for every cited docs file or section that is not there."""
  problems = []
  for path in _citing_files(root):
    # Citations wrap over lines, inside comments too: join the lines, drop the comment markers.
    text = re.sub(r"\s*\n\s*(?:#+\s*)?", " ", path.read_text(encoding="utf-8", errors="replace"))
    for name, title in CITATION.findall(text):
      doc = root / "docs" / name
      where = f"{path.relative_to(root)}: docs/{name}" + (f' "{title}"' if title else "")
      if not doc.is_file():
        problems.append(f"{where} (no such file)")
      elif title and not any(_normalised_title(h).startswith(_normalised_title(title))
                             for h in _headings(doc.read_text(encoding="utf-8"))):
        problems.append(f"{where} (no such section)")
  return problems


def test_markdown_links_and_anchors_resolve():
  problems = broken_links(ROOT)
  assert not problems, "\n".join(problems)


def test_cited_docs_files_and_sections_exist():
  problems = broken_citations(ROOT)
  assert not problems, "\n".join(problems)


def test_a_moved_section_is_caught(tmp_path):
  """A link into a renamed heading, a link to a moved file and a code citation of a section that
  moved away are each reported; the links and the citation that still resolve are not."""
  docs = tmp_path / "docs"
  (docs / "results").mkdir(parents=True)
  (docs / "guide.md").write_text(
      "# Guide\n\n## What to run\n\n```\n## not a heading\n```\n\n## What to run\n\n"
      "[record](results/study.md#measured-2026-12-02) [gone](results/old.md) "
      "[here](#what-to-run-1) [not a\nheading](#not-a-heading) `[code](nowhere.md)`\n")
  (docs / "results" / "study.md").write_text(
      "# Study\n\n## Measured (2026-12-03)\n\n[guide](../guide.md#what-to-run)\n")
  (tmp_path / "README.md").write_text("[guide](docs/guide.md) [web](https://example.org/x.md)\n")
  (tmp_path / "code.py").write_text('"""Rules (docs/guide.md, "What to\n  run"); (docs/guide.md,\n'
                                    '# "Where the time goes").\n"""\n')
  assert broken_links(tmp_path) == [
      "docs/guide.md: results/study.md#measured-2026-12-02 (no heading with that anchor)",
      "docs/guide.md: results/old.md (no such file)",
      "docs/guide.md: #not-a-heading (no heading with that anchor)",
  ]
  assert broken_citations(tmp_path) == [
      'code.py: docs/guide.md "Where the time goes" (no such section)']
