"""A report as a list of blocks, written out twice: Markdown that links its PNGs, and one
self-contained HTML page (PNGs embedded as base64 data URIs, inline CSS, no script, nothing
fetched), so that the page opens from disk, is mailed as one file, and works offline.
"""

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Paragraph:
    text: str  # may hold `code` and **bold**


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list]


@dataclass
class Figure:
    path: str  # relative to the report's folder
    caption: str


def _md_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list) -> str:
    lines = []
    for block in blocks:
        if isinstance(block, Heading):
            lines.append("#" * block.level + " " + block.text)
        elif isinstance(block, Paragraph):
            lines.append(block.text)
        elif isinstance(block, Bullets):
            lines.extend(f"- {item}" for item in block.items)
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
            lines.append("|" + "---|" * len(block.header))
            lines.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows)
        elif isinstance(block, Figure):
            lines.append(f"![{block.caption}]({block.path})")
        lines.append("")
    return "\n".join(lines)


def _inline(text: str) -> str:
    """Escape, then the two Markdown inline marks the reports use."""
    escaped = html.escape(str(text))
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)


_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.88em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.55em; text-align: right; white-space: nowrap; }
th { white-space: normal; } .scroll { overflow-x: auto; }
th { background: #eef1f5; } td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
code { background: #f3f3f3; padding: 0 0.2em; }
h1, h2, h3 { border-bottom: 1px solid #eee; padding-bottom: 0.15em; }
"""


def to_html(blocks: list, base_dir: Path, title: str) -> str:
    """One page; every Figure's PNG (read from ``base_dir / path``) is inlined as a data URI."""
    body = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Bullets):
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in block.header)
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                           for row in block.rows)
            # wide tables scroll sideways instead of squeezing "12.34 ± 0.56 (3)" onto three lines
            body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')
        elif isinstance(block, Figure):
            data = base64.b64encode((Path(base_dir) / block.path).read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{_inline(block.caption)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def confusion_table(matrix, class_names: list[str]) -> Table:
    """A confusion matrix as a table: rows the true class (in bold), columns the predicted one."""
    return Table(["true \\ predicted", *class_names],
                 [[f"**{name}**", *(int(v) for v in matrix[i])] for i, name in enumerate(class_names)])


def write_report(blocks: list, directory: Path, name: str, title: str) -> Path:
    """DIRECTORY/NAME.md and the self-contained DIRECTORY/NAME.html; returns the Markdown's path."""
    directory = Path(directory)
    (directory / f"{name}.html").write_text(to_html(blocks, directory, title))
    path = directory / f"{name}.md"
    path.write_text(to_markdown(blocks))
    return path
