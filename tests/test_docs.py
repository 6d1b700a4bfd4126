"""Every ```python block in docs/ runs; blocks of one page share a namespace, in order."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").rglob("*.md"))
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)

STANDARD_PROMOTION_REASON = "lessons call optax, whose bias correction mixes int32 and float"


def test_there_are_lessons():
    assert any(BLOCK.search(p.read_text()) for p in PAGES)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_code_blocks_run(page):
    namespace = {"__name__": f"docs_{page.stem}"}
    for i, block in enumerate(BLOCK.findall(page.read_text())):
        try:
            exec(compile(block, f"{page.name}[block {i}]", "exec"), namespace)
        except Exception as e:  # name the page and block in the failure
            raise AssertionError(f"{page.relative_to(ROOT)}, code block {i} failed: {type(e).__name__}: {e}") from e
