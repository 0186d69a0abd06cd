"""A report's HTML must hold everything its Markdown does: every figure (inlined) and every table;
where headless Chromium is installed (Debian's chromium, with the playwright package), the page is
also opened in it, offline, and every figure must decode and every table be laid out."""

import base64
import re
import shutil
from pathlib import Path

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]


def chromium() -> str | None:
    """The headless browser the pages are checked in, or None where it is not installed."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def rendered(page: Path, screenshot: Path | None = None) -> dict:
    """Open ``page`` in headless Chromium with the network cut off; what it shows: per figure whether it
    decoded (and its width), per table its laid-out height, and the requests the page tried to make."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        tab = browser.new_page()
        requests = []
        tab.route("**/*", lambda route: (requests.append(route.request.url), route.continue_()
                                         if route.request.url.startswith(("file:", "data:")) else route.abort()))
        tab.goto(Path(page).resolve().as_uri(), wait_until="load")
        shown = tab.evaluate("""() => ({
            figures: [...document.images].map(i => i.complete ? i.naturalWidth : 0),
            tables: [...document.querySelectorAll("table")].map(t => t.getBoundingClientRect().height),
            title: document.title})""")
        if screenshot is not None:
            tab.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    shown["requests"] = [url for url in requests if not url.startswith(("file:", "data:"))]
    return shown


def assert_renders_in_chromium(page: Path) -> None:
    shown = rendered(page)
    assert shown["figures"] and all(width > 0 for width in shown["figures"]), shown["figures"]
    assert shown["tables"] and all(height > 0 for height in shown["tables"]), shown["tables"]
    assert shown["requests"] == [] and shown["title"]


def assert_html_matches_markdown(markdown_path: Path) -> None:
    markdown = markdown_path.read_text()
    page = markdown_path.with_suffix(".html").read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert figures and page.count("<img ") == len(figures)
    for figure in figures:  # each PNG inlined, byte for byte
        assert base64.b64encode((markdown_path.parent / figure).read_bytes()).decode() in page, figure
    assert page.count("<table>") == len(re.findall(r"^\|(---\|)+$", markdown, re.M)) > 0
    assert "http://" not in page and "https://" not in page and "<script" not in page  # works offline
    if chromium():
        assert_renders_in_chromium(markdown_path.with_suffix(".html"))
