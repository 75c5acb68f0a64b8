import re

import pytest

from sparseforge.report.render import (
    NOT_ACCELERATED,
    accuracy_points,
    compare_runs,
    machine_line,
    summary_table,
    write_report,
)


def assert_self_contained(html: str) -> None:
    assert "data:image/png;base64," in html
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<link" not in html and "<script" not in html


def test_write_report_writes_md_html_and_plots(make_run, assert_png):
    run_dir = make_run()
    html_path = write_report(run_dir)
    assert html_path == run_dir / "report.html"
    assert_png(run_dir / "plots" / "layer_sparsity.png")
    assert_png(run_dir / "plots" / "training_curves.png")

    html = html_path.read_text(encoding="utf-8")
    assert_self_contained(html)
    assert html.count("data:image/png;base64,") == 2

    md = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "fmnist-gmp90" in md
    assert "92.1%" in md and "91.5%" in md and "-0.6 pp" in md
    assert NOT_ACCELERATED in md and "computed" in md
    assert "Test CPU 9000" in md and "4 torch threads" in md and "torch 2.13.0" in md
    assert "](plots/layer_sparsity.png)" in md and "](plots/training_curves.png)" in md
    assert "features.conv1" in md and "89.6%" in md  # per-layer table
    assert "| Metric | Dense | Compressed | Compressed / Dense |" in md


def test_summary_numbers_are_humanised(make_run):
    md = (write_report(make_run()).parent / "report.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "0.10×" in rows["Nonzeros"]
    assert "10.0 MFLOPs" in rows["Dense FLOPs"] and "1.1 MFLOPs" in rows["Effective FLOPs"]
    assert "4.0 kB" in rows["File size"] and "900 B" in rows["File size"]
    assert "90.0%" in rows["Sparsity"]
    assert "1.00× speed-up" in rows["CPU latency, batch 64 (ms)"]
    assert "8.00" in rows["CPU latency, batch 64 (ms)"]


def test_accelerated_run_has_no_dense_kernel_note(make_run):
    run_dir = make_run(accelerated=True)
    write_report(run_dir)
    assert NOT_ACCELERATED not in (run_dir / "report.md").read_text(encoding="utf-8")


def test_null_dense_renders_compressed_column_only(make_run):
    run_dir = make_run(dense=False, metrics=False)
    html = write_report(run_dir).read_text(encoding="utf-8")
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "| Metric | Compressed |" in md and "Dense |" not in md
    assert "91.5%" in md
    assert not (run_dir / "plots" / "training_curves.png").exists()
    assert_self_contained(html)


def test_null_dense_accuracy_renders_dash(make_summary):
    s = make_summary("x")
    s["dense"]["test_accuracy"] = None
    table = summary_table(s["dense"], s["compressed"])
    acc = next(row for row in table.rows if row[0] == "Test accuracy")
    assert acc == ("Test accuracy", "—", "91.5%", "—")


def test_missing_summary_tells_user_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"sparseforge train RECIPE.*sparseforge eval"):
        write_report(tmp_path)


def test_bad_metrics_line_is_reported_with_line_number(make_run):
    run_dir = make_run()
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        write_report(run_dir)


def test_compare_runs_contains_both_and_is_self_contained(make_run, tmp_path, assert_png):
    a, b = make_run("run-a"), make_run("run-b", dense=False)
    out = tmp_path / "cmp"
    html_path = compare_runs([a, b], out)
    html = html_path.read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "run-a" in html and "run-b" in html and "run-a" in md and "run-b" in md
    assert_self_contained(html)
    assert_png(out / "plots" / "accuracy_vs_sparsity.png")
    assert "](plots/accuracy_vs_sparsity.png)" in md
    assert html_path == out / "report.html"


def test_compare_runs_refuses_to_overwrite_a_run_report(make_run):
    run_dir = make_run()
    with pytest.raises(ValueError, match="run folder"):
        compare_runs([run_dir], run_dir)
    assert not (run_dir / "report.html").exists()


def test_compare_runs_missing_summary(make_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="sparseforge eval"):
        compare_runs([make_run(), tmp_path / "nope"], tmp_path / "cmp")


def test_accuracy_points_dedup_dense_reference(make_summary):
    runs = [make_summary("a"), make_summary("b"), make_summary("c", dense=False)]
    other = make_summary("d")
    other["dense"]["test_accuracy"] = 0.93
    points = accuracy_points([*runs, other])
    labels = [p[0] for p in points]
    assert labels.count("dense cnn/fashion_mnist") == 2  # two distinct dense references
    assert labels[-4:] == ["a", "b", "c", "d"]
    assert points[0][1:] == (0.0, 0.921)
    assert points[-1][1] == pytest.approx(0.9)


def test_a_dense_run_in_the_comparison_is_its_own_reference(make_summary):
    sparse = make_summary("sparse")
    dense_run = make_summary("dense", dense=False)
    dense_run["compressed"] = dict(sparse["dense"])
    points = accuracy_points([dense_run, sparse])
    assert [p[0] for p in points] == ["dense", "sparse"]


def test_machine_line_tolerates_missing_fields():
    assert machine_line(None) == "not recorded"
    assert machine_line({"torch_threads": 2}) == "unknown CPU, 2 torch threads"


def test_dense_run_is_called_the_reference_and_gets_no_sparsity_note(make_run):
    import json

    run_dir = make_run(dense=False)
    path = run_dir / "summary.json"
    data = json.loads(path.read_text())
    data["compressed"]["nonzeros"] = data["compressed"]["params"]
    path.write_text(json.dumps(data))
    md = (write_report(run_dir).parent / "report.md").read_text(encoding="utf-8")
    assert "A dense run" in md and NOT_ACCELERATED not in md
