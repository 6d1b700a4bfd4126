"""What the site shows of a page, beside what the tests run: notebooks, and the test markers hidden.

* Every lesson becomes a notebook, written when the build starts from the
  checked page itself (``docs/lessons/notebooks/<lesson>.ipynb``, not in
  git): each python block of the page is a code cell, in order, the prose
  between them markdown cells. A notebook therefore has exactly the code
  ``tests/test_docs.py`` runs and can never drift from it
  (``tests/test_docs_site.py`` compares them). Each lesson page links its
  notebook under its title.
* A link from a page to a file of the package (``[...](../../jaxnets/x.py)``)
  would make Sphinx copy the file as a download; it goes to a generated page
  that shows the file highlighted, with line numbers, instead
  (``docs/source_code/jaxnets/x.md``, not in git).
* A shown output opens with ``# output`` or ``# output (rtol=..., atol=...)``,
  the marker the tests read (``tests/doc_pages.py``). Readers see the block
  without the marker, styled as output (``.output`` in ``_static/custom.css``).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent
DOCS = HERE.parent
sys.path.insert(0, str(DOCS.parent / "tests"))

import doc_pages  # noqa: E402  (tests/doc_pages.py: the pages' conventions)

NOTEBOOKS = DOCS / "lessons" / "notebooks"
SOURCE_PAGES = DOCS / "source_code"
PACKAGE = DOCS.parent / "jaxnets"
SOURCE_LINK = re.compile(r"\]\((?P<path>(?:\.\./)+jaxnets/[\w/]+\.py)\)")
OUTPUT_BLOCK = re.compile(r"^(?P<fence>`{3,})text[ \t]*\n[ \t]*#\s*output\b[^\n]*\n", re.MULTILINE)
TITLE = re.compile(r"^# .*\n", re.MULTILINE)


def for_readers(text: str) -> str:
    """The page as readers see it: every output block without its test marker, styled as output."""
    return OUTPUT_BLOCK.sub(lambda m: f"{m['fence']}{{code-block}} text\n:class: output\n\n", text)


def notebook(page: pathlib.Path) -> dict:
    """The lesson as an nbformat-4 notebook: its python blocks as code cells, the prose between as markdown."""
    text = page.read_text(encoding="utf-8")
    cells, position = [], 0

    def markdown(chunk: str):
        chunk = for_readers(chunk).strip("\n")
        chunk = re.sub(r"`{3,}\{code-block\} text\n:class: output\n\n", "```text\n", chunk)
        if chunk.strip():
            cells.append({"cell_type": "markdown", "metadata": {}, "source": chunk.splitlines(keepends=True)})

    for match in doc_pages.FENCE.finditer(text):
        if match["lang"] != "python":
            continue
        markdown(text[position:match.start()])
        code = match["body"].rstrip("\n")
        cells.append({"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                      "source": code.splitlines(keepends=True)})
        position = match.end()
    markdown(text[position:])
    return {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                        "name": "python3"},
                                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def write_notebooks(app) -> None:
    NOTEBOOKS.mkdir(exist_ok=True)
    for page in sorted((DOCS / "lessons").glob("[0-9]*.md")):
        target = NOTEBOOKS / f"{page.stem}.ipynb"
        content = json.dumps(notebook(page), indent=1, ensure_ascii=False) + "\n"
        if not target.is_file() or target.read_text(encoding="utf-8") != content:
            target.write_text(content, encoding="utf-8")


def write_source_pages(app) -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        target = SOURCE_PAGES / path.relative_to(DOCS.parent).with_suffix(".md")
        target.parent.mkdir(parents=True, exist_ok=True)
        include = os.path.relpath(path, target.parent)
        name = path.relative_to(DOCS.parent).as_posix()
        content = (f"---\norphan: true\n---\n\n# `{name}`\n\n```{{literalinclude}} {include}\n"
                   f":language: python\n:linenos:\n```\n")
        if not target.is_file() or target.read_text(encoding="utf-8") != content:
            target.write_text(content, encoding="utf-8")


def source_links(docname: str, text: str) -> str:
    """Links to the package's files, pointed at their highlighted pages."""
    here = (DOCS / docname).parent

    def to_page(match):
        file = (here / match["path"]).resolve()
        if not file.is_file():
            return match.group(0)
        page = SOURCE_PAGES / file.relative_to(DOCS.parent).with_suffix(".md")
        return f"]({os.path.relpath(page, here)})"

    return SOURCE_LINK.sub(to_page, text)


def rewrite_source(app, docname: str, source: list[str]) -> None:
    text = source_links(docname, for_readers(source[0]))
    if docname.startswith("lessons/") and (NOTEBOOKS / f"{docname.split('/')[-1]}.ipynb").is_file():
        stem = docname.split("/")[-1]
        link = (f"\n{{download}}`Download this lesson as a notebook <notebooks/{stem}.ipynb>` "
                f"(the page's code, cell by cell).\n\n")
        title = TITLE.search(text)
        if title:
            text = text[:title.end()] + link + text[title.end():]
    source[0] = text


def setup(app):
    app.connect("builder-inited", write_notebooks)
    app.connect("builder-inited", write_source_pages)
    app.connect("source-read", rewrite_source)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
