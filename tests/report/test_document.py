from pathlib import Path

from sparseforge.report.document import (
    Document,
    Heading,
    Image,
    Paragraph,
    Table,
    to_html,
    to_markdown,
)


def test_markdown_escapes_pipes_and_links_images_relatively(tmp_path):
    img = tmp_path / "plots" / "a.png"
    img.parent.mkdir()
    img.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    doc = Document("T", [Heading("H"), Table(("a", "b"), (("x|y", "1"),)), Image(img, "alt")])
    md = to_markdown(doc, tmp_path)
    assert "# T" in md and "## H" in md
    assert "| x\\|y | 1 |" in md
    assert "|---|---:|" in md
    assert "![alt](plots/a.png)" in md


def test_html_escapes_text_and_inlines_images(tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    doc = Document("<T>", [Paragraph("a & b", lead="Note:", note=True), Image(img, "alt")])
    page = to_html(doc)
    assert "&lt;T&gt;" in page and "a &amp; b" in page and '<p class="note">' in page
    assert 'src="data:image/png;base64,iVBORw0KGgpmYWtl"' in page
    assert "<style>" in page


def test_table_alignment_marks_text_columns():
    doc = Document("T", [Table(("name", "type", "n"), (("a", "b", "1"),), left=2)])
    assert "|---|---|---:|" in to_markdown(doc, Path("."))
    assert '<td class="l">b</td><td>1</td>' in to_html(doc)
