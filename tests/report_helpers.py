"""A report's HTML must hold everything its Markdown does: every figure (inlined) and every table."""

import base64
import re
from pathlib import Path


def assert_html_matches_markdown(markdown_path: Path) -> None:
    markdown = markdown_path.read_text()
    page = markdown_path.with_suffix(".html").read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert figures and page.count("<img ") == len(figures)
    for figure in figures:  # each PNG inlined, byte for byte
        assert base64.b64encode((markdown_path.parent / figure).read_bytes()).decode() in page, figure
    assert page.count("<table>") == len(re.findall(r"^\|(---\|)+$", markdown, re.M)) > 0
    assert "http://" not in page and "https://" not in page and "<script" not in page  # works offline
