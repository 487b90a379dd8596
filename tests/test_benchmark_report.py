"""benchmarks/report.py: the recorded results render, and the tables in the markdown files are
the ones the results files give (a changed results file without --update fails here)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT = os.path.join(ROOT, "benchmarks", "report.py")
MARKED = ["benchmarks/README.md", "docs/gpu.md", "docs/kernels.md"]

def report(*args, cwd=ROOT):
    return subprocess.run([sys.executable, REPORT, *args], capture_output=True, text=True, cwd=cwd)

def test_marked_tables_are_current():
    result = report("--check", *MARKED)
    assert result.returncode == 0, result.stderr

def test_every_recorded_table_renders_with_its_machine():
    result = report()
    assert result.returncode == 0, result.stderr
    folder = os.path.join(ROOT, "benchmarks", "results")
    for name in os.listdir(folder):
        with open(os.path.join(folder, name)) as handle:
            record = json.load(handle)
        for table in record["tables"]:
            assert f"**{table['title']}.** {record['machine']}" in result.stdout
            assert f"(benchmarks/results/{name})" in result.stdout

def test_check_fails_on_a_stale_table(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- report: demo -->\nold numbers\n<!-- /report -->\n")
    stale = report("--check", str(page))
    assert stale.returncode == 1 and "stale tables in" in stale.stderr
    assert report("--update", str(page)).returncode == 0
    assert "old numbers" not in page.read_text() and "54.8%" in page.read_text()
    assert report("--check", str(page)).returncode == 0
