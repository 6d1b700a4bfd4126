"""Redraw the lessons' figures: run each lesson's code with the current directory here.

    python docs/lessons/make_figures.py                 # every lesson that links a figure
    python docs/lessons/make_figures.py 04_activations  # one lesson (file stem or name)

Each figure-making block saves its PNG under ``figures/`` relative to the
current directory; run from this folder, that is ``docs/lessons/figures/``,
the folder the pages link and the site shows. The same code runs in the tests
(``tests/test_docs.py``) in a temporary folder, which checks that every linked
figure is drawn and is a real picture, and that the printed outputs are the
pages' own.
"""

import os
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "tests"))
os.environ.setdefault("MPLBACKEND", "Agg")

import doc_pages  # noqa: E402  (tests/doc_pages.py: the pages' conventions)


def main(names: list[str]) -> None:
    pages = sorted(HERE.glob("*.md"))
    if names:
        pages = [p for p in pages if p.stem in names or p.name in names]
    for page in pages:
        linked = doc_pages.images(page.read_text())
        if not linked:
            continue
        start = time.perf_counter()
        doc_pages.run_page(page, HERE)
        for image in linked:
            problem = doc_pages.image_problems(HERE / image)
            if problem:
                raise SystemExit(f"{page.name}: {image} {problem}")
        print(f"{page.name}: {', '.join(linked)} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
