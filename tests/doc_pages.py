"""Running the docs' pages: code blocks, the outputs they print, the figures they draw.

Conventions a page follows (``tests/test_docs.py`` checks them, and
``docs/lessons/make_figures.py`` uses this module to redraw the figures):

* Every ```python block runs, in order, in one namespace per page, with the
  current directory set to a folder of the caller's choice (a temporary one in
  the tests, ``docs/lessons`` when drawing the committed figures).
* A ```text block right after a python block whose first line is
  ``# output`` shows what that block prints. The test compares the text with
  the block's stdout: words and punctuation exactly (runs of whitespace
  count as one space), numbers within a tolerance, ``rtol=1e-3, atol=1e-6``
  unless the marker line states its own: ``# output (rtol=0.02, atol=0.005)``.
  ``...`` in the shown text stands for any text (as in doctest's ELLIPSIS).
* An image linked as ``![alt](figures/name.png)`` must be written, under that
  relative path, by the page's own code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import pathlib
import re

FENCE = re.compile(r"^(?P<fence>`{3,})(?P<lang>[\w-]*)[ \t]*\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.DOTALL | re.MULTILINE)
MARKER = re.compile(r"^#\s*output\s*(?:\((?P<opts>[^)]*)\))?\s*:?\s*$")
IMAGE = re.compile(r"!\[[^\]]*\]\((?P<path>[^)\s]+\.png)\)")
NUMBER = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf)"
EXPECTED_TOKEN = re.compile(rf"(?P<ellipsis>\.\.\.)|(?P<number>(?<![\w.]){NUMBER}(?![\w]))|(?P<space>\s+)|(?P<text>.)",
                            re.DOTALL)
DEFAULT_RTOL, DEFAULT_ATOL = 1e-3, 1e-6


@dataclasses.dataclass
class Block:
    index: int  # among the page's python blocks
    line: int  # 1-based line of the opening fence
    code: str
    expected: str | None = None  # the shown output, marker line removed
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL


def parse_tolerances(opts: str | None) -> tuple[float, float]:
    rtol, atol = DEFAULT_RTOL, DEFAULT_ATOL
    for item in filter(None, (s.strip() for s in (opts or "").split(","))):
        name, _, value = item.partition("=")
        if name.strip() == "rtol":
            rtol = float(value)
        elif name.strip() == "atol":
            atol = float(value)
        else:
            raise ValueError(f"unknown tolerance {name.strip()!r} in an output marker (expected rtol or atol)")
    return rtol, atol


def blocks(text: str) -> list[Block]:
    """The page's python blocks, each with the output shown right after it (if any)."""
    found, previous = [], None
    for match in FENCE.finditer(text):
        lang, body = match["lang"], match["body"]
        line = text.count("\n", 0, match.start()) + 1
        if lang == "python":
            previous = Block(len(found), line, body)
            found.append(previous)
            last_end = match.end()
            continue
        if lang == "text" and previous is not None and previous.expected is None:
            first, _, rest = body.partition("\n")
            marker = MARKER.match(first.strip())
            if marker and text[last_end:match.start()].strip() == "":
                previous.rtol, previous.atol = parse_tolerances(marker["opts"])
                previous.expected = rest
                continue
            if marker:
                raise ValueError(f"line {line}: an '# output' block must follow its python block directly")
        previous = None
    return found


def images(text: str) -> list[str]:
    """Relative paths of the PNG images the page links."""
    return [m["path"] for m in IMAGE.finditer(text) if "://" not in m["path"]]


def compare_output(expected: str, actual: str, rtol: float, atol: float) -> None:
    """Raise AssertionError unless ``actual`` reads as ``expected``: text exactly, numbers within tolerance."""
    pattern, numbers = [], []
    for token in EXPECTED_TOKEN.finditer(expected.strip()):
        if token["ellipsis"]:
            pattern.append(r".*?")
        elif token["number"]:
            pattern.append(rf"({NUMBER})")
            numbers.append(token["number"])
        elif token["space"]:
            pattern.append(r"\s+")
        else:
            pattern.append(re.escape(token["text"]))
    match = re.fullmatch("".join(pattern), actual.strip(), re.DOTALL)
    if match is None:
        raise AssertionError(f"the printed text differs from the page's.\n--- page shows:\n{expected.strip()}\n"
                             f"--- code prints:\n{actual.strip()}")
    for shown, printed in zip(numbers, match.groups()):
        a, b = float(shown), float(printed)
        if math.isnan(a) and math.isnan(b):
            continue
        if not (a == b or abs(a - b) <= atol + rtol * abs(b)):
            raise AssertionError(f"the page shows {shown} where the code prints {printed} "
                                 f"(rtol={rtol}, atol={atol}).\n--- code prints:\n{actual.strip()}")


@dataclasses.dataclass
class BlockFailure(Exception):
    page: str
    block: Block
    reason: str

    def __str__(self):
        return f"{self.page}, python block {self.block.index} (line {self.block.line}): {self.reason}"


def run_page(page: pathlib.Path, cwd: pathlib.Path, *, check_outputs: bool = True, echo: bool = False) -> dict:
    """Run every python block of ``page`` in order, in ``cwd``; return the namespace.

    Raises :class:`BlockFailure` naming the block that failed or printed
    something other than the page shows.
    """
    os.environ.setdefault("MPLBACKEND", "Agg")
    namespace = {"__name__": f"docs_{page.stem}"}
    previous = pathlib.Path.cwd()
    os.chdir(cwd)
    try:
        for block in blocks(page.read_text()):
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out):
                    exec(compile(block.code, f"{page.name}[block {block.index}]", "exec"), namespace)
            except Exception as e:
                raise BlockFailure(page.name, block, f"{type(e).__name__}: {e}") from e
            if echo:
                print(out.getvalue(), end="")
            if check_outputs and block.expected is not None:
                try:
                    compare_output(block.expected, out.getvalue(), block.rtol, block.atol)
                except AssertionError as e:
                    raise BlockFailure(page.name, block, str(e)) from None
    finally:
        os.chdir(previous)
        with contextlib.suppress(ImportError):
            import matplotlib.pyplot as plt

            plt.close("all")
    return namespace


def image_problems(path: pathlib.Path, *, min_bytes: int = 8000, min_std: float = 0.03) -> str | None:
    """Why ``path`` is not a real figure (missing, tiny, or one flat colour), or None."""
    if not path.is_file():
        return "was not written"
    size = path.stat().st_size
    if size < min_bytes:
        return f"is only {size} bytes"
    import matplotlib.image
    import numpy as np

    pixels = np.asarray(matplotlib.image.imread(path))[..., :3]
    if pixels.shape[0] < 200 or pixels.shape[1] < 200:
        return f"is only {pixels.shape[1]}x{pixels.shape[0]} pixels"
    if float(pixels.std()) < min_std:
        return f"is nearly one flat colour (pixel std {float(pixels.std()):.4f})"
    return None
