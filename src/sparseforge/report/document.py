"""A tiny report document (headings, paragraphs, tables, images) rendered to Markdown with
relative image links and to self-contained HTML with images inlined as base64 data URIs."""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str
    lead: str | None = None  # bold prefix
    note: bool = False  # rendered as a call-out


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    left: int = 1  # leading text columns aligned left; the rest are numbers, aligned right


@dataclass(frozen=True)
class Image:
    path: Path
    alt: str


Block = Heading | Paragraph | Table | Image


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: Document, base_dir: Path) -> str:
    """Markdown with image links relative to `base_dir` (where the .md file will live)."""
    out = [f"# {doc.title}", ""]
    for block in doc.blocks:
        if isinstance(block, Heading):
            out += [f"{'#' * block.level} {block.text}", ""]
        elif isinstance(block, Paragraph):
            text = f"**{block.lead}** {block.text}" if block.lead else block.text
            out += [f"> {text}" if block.note else text, ""]
        elif isinstance(block, Table):
            out.append("| " + " | ".join(_md_cell(c) for c in block.header) + " |")
            n_right = len(block.header) - block.left
            out.append("|" + "|".join(["---"] * block.left + ["---:"] * n_right) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            out.append("")
        else:
            rel = Path(os.path.relpath(block.path, base_dir)).as_posix()
            out += [f"![{block.alt}]({rel})", ""]
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:60rem;margin:2rem auto;
padding:0 1rem;color:#222;line-height:1.5}
table{border-collapse:collapse;margin:1rem 0}
th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
th.l,td.l{text-align:left}
th{background:#f3f3f3}
.note{border-left:4px solid #d08c00;background:#fff7e0;padding:.5rem 1rem}
figure{margin:1rem 0}img{max-width:100%}
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _row(tag: str, cells: tuple[str, ...], left: int) -> str:
    """One table row; the first `left` cells get the left-aligned class."""
    parts = []
    for i, cell in enumerate(cells):
        attr = ' class="l"' if i < left else ""
        parts.append(f"<{tag}{attr}>{html.escape(cell)}</{tag}>")
    return "<tr>" + "".join(parts) + "</tr>"


def to_html(doc: Document) -> str:
    """One self-contained HTML page: inline CSS, images as data URIs, no external resources."""
    e = html.escape
    body = [f"<h1>{e(doc.title)}</h1>"]
    for block in doc.blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{e(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            lead = f"<strong>{e(block.lead)}</strong> " if block.lead else ""
            cls = ' class="note"' if block.note else ""
            body.append(f"<p{cls}>{lead}{e(block.text)}</p>")
        elif isinstance(block, Table):
            head = _row("th", block.header, block.left)
            rows = "".join(_row("td", row, block.left) for row in block.rows)
            body.append(f"<table><thead>{head}</thead><tbody>{rows}</tbody></table>")
        else:
            body.append(
                f'<figure><img src="{_data_uri(block.path)}" alt="{e(block.alt)}">'
                f"<figcaption>{e(block.alt)}</figcaption></figure>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(doc.title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write(doc: Document, md_path: Path, html_path: Path) -> Path:
    """Write both renderings (UTF-8); returns the HTML path."""
    md_path.write_text(to_markdown(doc, md_path.parent), encoding="utf-8")
    html_path.write_text(to_html(doc), encoding="utf-8")
    return html_path
