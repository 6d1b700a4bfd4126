"""Sphinx configuration: MyST Markdown pages, API reference from the docstrings, sphinx-book-theme.

Build (warnings are errors, as in the tests):

    pip install -e ".[docs]"
    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import pathlib
import sys

import jaxnets

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "_ext"))

project = "jaxnets"
author = "the jaxnets developers"
copyright = "2026, the jaxnets developers"
release = version = jaxnets.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # Google-style Args/Returns/Raises sections
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 bundled into _static/mathjax: formulas render with no network
    "sphinx.ext.viewcode",
    "sphinx_togglebutton",  # folds the lessons' solutions (admonitions with :class: dropdown)
    "lesson_pages",  # _ext/lesson_pages.py: a notebook per lesson, from the checked page; test markers hidden
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "lessons/notebooks"]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = [("Shapes", "notes_style"), ("Example", "example"), ("References", "notes_style")]

html_theme = "sphinx_book_theme"
html_title = "jaxnets"
html_theme_options = {"show_toc_level": 2, "use_download_button": False}
html_static_path = ["_static"]
html_css_files = ["custom.css"]
napoleon_use_ivar = True

# The bundled MathJax (sphinx-mathjax-offline copies it into _static/mathjax when the build finishes);
# Sphinx's default is a CDN address, which a reader without a network cannot load.
mathjax_path = "mathjax/tex-chtml.js"
