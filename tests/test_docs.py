"""Every ```python block in docs/ runs; blocks of one page share a namespace, in order.

Each page runs in a fresh temporary directory. What a page shows as a block's
output (a ```text block opened by ``# output``) is what the block prints,
numbers within the stated tolerance; every PNG figure a page links is drawn
by the page's own code and is a real picture; every lesson ends with
exercises whose solutions run here. The conventions are in ``tests/doc_pages.py``.
"""

import pathlib
import re

import pytest

import doc_pages

ROOT = pathlib.Path(__file__).resolve().parent.parent
# the docs' own pages (the site build generates highlighted source pages under docs/source_code: not pages to run)
PAGES = sorted(p for p in (ROOT / "docs").rglob("*.md") if not {"source_code", "_build"} & set(p.parts))
LESSONS = sorted((ROOT / "docs" / "lessons").glob("[0-9]*.md"))

STANDARD_PROMOTION_REASON = "lessons call optax, whose bias correction mixes int32 and float"


def test_there_are_lessons():
    assert any(doc_pages.blocks(p.read_text()) for p in PAGES)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_code_blocks_run(page, tmp_path):
    try:
        doc_pages.run_page(page, tmp_path)
    except doc_pages.BlockFailure as e:  # name the page and block in the failure
        raise AssertionError(f"{page.relative_to(ROOT)}: {e}") from e.__cause__
    for image in doc_pages.images(page.read_text()):
        problem = doc_pages.image_problems(tmp_path / image)
        assert problem is None, f"{page.relative_to(ROOT)} links {image}, which its code {problem}"
        assert (page.parent / image).is_file(), (
            f"{page.relative_to(ROOT)} links {image}, which is not committed: run python docs/lessons/make_figures.py")


@pytest.mark.parametrize("page", LESSONS, ids=[p.name for p in LESSONS])
def test_lessons_end_with_exercises_and_checked_solutions(page):
    text = page.read_text()
    heading = re.search(r"^## Exercises\s*$", text, re.MULTILINE)
    assert heading, f"{page.name} has no '## Exercises' section"
    tail = text[heading.end():]
    solutions = re.findall(r"^:::+\{admonition\} Solution.*?\n:class: dropdown\n(.*?)^:::+\s*$", tail,
                           re.DOTALL | re.MULTILINE)
    assert solutions, f"{page.name}'s exercises have no folded solution (an admonition with :class: dropdown)"
    for solution in solutions:
        assert "```python" in solution and "assert" in solution, (
            f"{page.name}: every solution is code that checks itself (a python block with an assert)")


def test_output_blocks_are_compared():
    shown = "loss 0.500, accuracy 0.91 after (23, 64) steps of dense_0 ..."
    doc_pages.compare_output(shown, "loss 0.5004, accuracy 0.9105 after (23, 64) steps of dense_0 and more", 1e-3, 1e-6)
    with pytest.raises(AssertionError, match="shows 0.91 where the code prints 0.95"):
        doc_pages.compare_output("accuracy 0.91", "accuracy 0.95", 1e-3, 1e-6)
    with pytest.raises(AssertionError, match="printed text differs"):
        doc_pages.compare_output("loss 0.5", "cost 0.5", 1e-3, 1e-6)
    page = "```python\nprint(1 / 3)\n```\n\n```text\n# output (rtol=0.01)\n0.33\n```\n"
    (block,) = doc_pages.blocks(page)
    assert block.expected.strip() == "0.33" and block.rtol == 0.01
    doc_pages.compare_output(block.expected, "0.3333333333333333\n", block.rtol, block.atol)


COLUMN = 88  # characters of code that fit the lessons' column at 1280 px (docs/_static/custom.css)


@pytest.mark.parametrize("page", LESSONS, ids=[p.name for p in LESSONS])
def test_lesson_code_fits_the_column(page):
    wide = [(block.line + 1 + i, len(line)) for block in doc_pages.blocks(page.read_text())
            for i, line in enumerate(block.code.splitlines()) if len(line) > COLUMN]
    assert not wide, f"{page.name}: code lines wider than {COLUMN} characters (line, width): {wide}"


def test_every_print_shows_its_output():
    missing = [f"{page.relative_to(ROOT)}:{block.line}" for page in PAGES for block in doc_pages.blocks(page.read_text())
               if re.search(r"\bprint\(", block.code) and block.expected is None]
    assert not missing, f"python blocks that print but show no '# output' block after them: {missing}"
