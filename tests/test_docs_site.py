"""The documentation site builds with Sphinx (MyST pages, API reference from the docstrings), warnings as errors.

The site is built once per run (a module fixture) and then read: it loads
nothing from another host (formulas, styles and fonts are bundled, so the
pages render with no network).
"""

import html.parser
import pathlib
import re
import subprocess
import sys
import urllib.parse

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

pytest.importorskip("sphinx", reason="the site needs the docs extra: pip install -e '.[test]'")
pytest.importorskip("myst_parser")

# <link rel=...> values that make the browser fetch the address (a rel="next" or "canonical" only names a page)
LOADING_RELS = {"stylesheet", "preload", "modulepreload", "prefetch", "icon", "shortcut", "apple-touch-icon",
                "manifest", "dns-prefetch", "preconnect"}
CSS_URL = re.compile(r"""url\(\s*['"]?(?P<url>[^'")\s]+)['"]?\s*\)|@import\s+(?:url\()?\s*['"](?P<imported>[^'"]+)['"]""")


def remote(address: str) -> bool:
    """Whether a browser would reach another host for ``address`` (http(s), protocol-relative)."""
    parsed = urllib.parse.urlsplit(address.strip())
    return parsed.scheme in ("http", "https") or address.strip().startswith("//")


class Loads(html.parser.HTMLParser):
    """The addresses a page makes the browser fetch: scripts, loaded links, images, frames, media, inline styles."""

    def __init__(self):
        super().__init__()
        self.addresses: list[tuple[str, str]] = []  # (what, address)
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and attrs.get("src"):
            self.addresses.append(("script", attrs["src"]))
        elif tag == "link" and attrs.get("href"):
            rels = set((attrs.get("rel") or "").lower().split())
            if rels & LOADING_RELS:
                self.addresses.append((f"link rel={attrs.get('rel')}", attrs["href"]))
        elif tag in ("img", "iframe", "source", "audio", "video", "embed") and attrs.get("src"):
            self.addresses.append((tag, attrs["src"]))
        elif tag == "object" and attrs.get("data"):
            self.addresses.append((tag, attrs["data"]))
        if attrs.get("style"):
            self.addresses += [("inline style", m["url"] or m["imported"]) for m in CSS_URL.finditer(attrs["style"])]
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.addresses += [("<style>", m["url"] or m["imported"]) for m in CSS_URL.finditer(data)]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "html"
    result = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
                             str(ROOT / "docs"), str(out)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"sphinx failed:\n{result.stdout}\n{result.stderr}"
    return out


@pytest.mark.slow
def test_site_builds_without_warnings(site):
    api = (site / "api" / "layers.html").read_text()
    assert "define_layer" in api and "Dense" in api, "the API reference lacks the layers' docstrings"
    for page in ("index.html", "guides/custom_layers.html", "lessons/07_backprop_by_hand.html"):
        assert (site / page).stat().st_size > 5000, f"{page} is nearly empty"


@pytest.mark.slow
def test_site_loads_nothing_from_another_host(site):
    # the pages (the themes' Jinja macro files copied under _static are templates, not pages)
    pages = sorted(p for p in site.rglob("*.html") if "_static" not in p.relative_to(site).parts)
    assert len(pages) > 30
    problems = []
    for page in pages:
        parser = Loads()
        parser.feed(page.read_text(encoding="utf-8"))
        for what, address in parser.addresses:
            if remote(address):
                problems.append(f"{page.relative_to(site)}: {what} {address}")
                continue
            target = urllib.parse.urlsplit(address).path
            if target and not address.startswith("data:") and not (page.parent / urllib.parse.unquote(target)).exists():
                problems.append(f"{page.relative_to(site)}: {what} {address} is not in the build")
    for sheet in sorted(site.rglob("*.css")):
        for match in CSS_URL.finditer(sheet.read_text(encoding="utf-8", errors="replace")):
            address = match["url"] or match["imported"]
            if remote(address):
                problems.append(f"{sheet.relative_to(site)}: url {address}")
    assert not problems, "the site reaches other hosts (it must render offline):\n" + "\n".join(problems[:40])
    # the formulas' renderer is the bundled MathJax, and its fonts are there beside it
    lesson = (site / "lessons" / "11_optimizers.html").read_text(encoding="utf-8")
    assert re.search(r'<script[^>]*src="[./]*_static/mathjax/tex-chtml\.js', lesson), "no bundled MathJax on a lesson"
    assert any((site / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff")), (
        "MathJax's fonts are not bundled")


def test_the_offline_check_sees_remote_loads():
    parser = Loads()
    parser.feed('<script defer src="https://cdn.jsdelivr.net/npm/mathjax@4/tex-mml-chtml.js"></script>'
                '<link rel="stylesheet" href="//fonts.example.org/css"><link rel="next" href="https://example.org">'
                '<style>@import "https://example.org/a.css"; .x { background: url(img/local.png) }</style>'
                '<script src="_static/local.js"></script>')
    assert [a for _, a in parser.addresses if remote(a)] == [
        "https://cdn.jsdelivr.net/npm/mathjax@4/tex-mml-chtml.js", "//fonts.example.org/css", "https://example.org/a.css"]
    assert [m["url"] or m["imported"] for m in CSS_URL.finditer("@font-face{src:url('https://x.org/f.woff2')}")] == [
        "https://x.org/f.woff2"]


@pytest.mark.slow
def test_every_lesson_has_its_notebook_with_the_pages_code(site):
    import json

    sys.path.insert(0, str(ROOT / "tests"))
    import doc_pages

    lessons = sorted((ROOT / "docs" / "lessons").glob("[0-9]*.md"))
    assert len(lessons) >= 14
    for lesson in lessons:
        page = (site / "lessons" / f"{lesson.stem}.html").read_text(encoding="utf-8")
        link = re.search(rf'href="(?P<href>[^"]*/{lesson.stem}\.ipynb)"', page)
        assert link, f"{lesson.name}: the page links no notebook"
        built = site / "lessons" / link["href"]
        assert built.is_file(), f"{lesson.name}: the notebook {link['href']} is not in the build"
        cells = json.loads(built.read_text(encoding="utf-8"))["cells"]
        code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        assert code == [b.code.rstrip("\n") for b in doc_pages.blocks(lesson.read_text())], (
            f"{lesson.name}: the notebook's code cells differ from the page's python blocks")
        # the tests' output markers are hidden from readers (the shown outputs stay)
        assert not re.search(r'#\s*output\s*(\((rtol|atol)|</span>|\n)', page), (
            f"{lesson.name}: a test marker '# output ...' shows in the built page")


@pytest.mark.slow
def test_sources_are_shown_not_downloaded_and_the_landing_page_links_the_reference(site):
    downloads = sorted(str(p.relative_to(site)) for p in (site / "_downloads").rglob("*.py"))
    assert not downloads, f"links to the package's files download them instead of showing them: {downloads}"
    lesson = (site / "lessons" / "07_backprop_by_hand.html").read_text(encoding="utf-8")
    assert 'href="../source_code/jaxnets/backprop.html"' in lesson
    shown = (site / "source_code" / "jaxnets" / "backprop.html").read_text(encoding="utf-8")
    assert "def value_and_grad" in re.sub(r"<[^>]+>", "", shown), "the source page does not show the source"
    index = (site / "index.html").read_text(encoding="utf-8")
    for target in ("api/index.html", "prerequisites.html", "glossary.html"):
        assert f'href="{target}' in index, f"the landing page does not link {target}"
