"""Markdown tables of benchmark results.

A pytest-benchmark JSON file becomes a table of medians and speedups against the reference path,
and optionally a PNG bar chart of the speedups (needs matplotlib):

    pytest benchmarks/ --benchmark-only -m quick --benchmark-json=bench.json
    python benchmarks/report.py bench.json [--png speedups.png]

The recorded results, ``benchmarks/results/*.json`` (one file per machine and date), become one
table each; ``--update`` rewrites the tables between ``<!-- report: ID -->`` and
``<!-- /report -->`` in markdown files, ``--check`` fails where such a table is out of date:

    python benchmarks/report.py                        # every recorded table
    python benchmarks/report.py --update benchmarks/README.md docs/gpu.md docs/kernels.md
    python benchmarks/report.py --check benchmarks/README.md docs/gpu.md docs/kernels.md

A results file is ``{"machine", "date", "software", "tables": [...]}``; a table has an ``id``, a
``title``, the ``command`` that measured it, an optional ``note`` and either ``columns`` and
``rows`` (null: an empty cell), ``pytest_benchmark`` (the path of a pytest-benchmark JSON file,
from the repository root) or ``targets_json`` (the path of ``scripts/gpu_check.py --targets``'s
output).
"""

import argparse
import glob
import json
import os
import re
import sys
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
MARKER = re.compile(r"(<!-- report: ([\w-]+) -->\n)(.*?)(<!-- /report -->)", re.S)

EXTRA_COLUMNS = ("GB/s", "fraction_of_copy", "samples_per_s", "peak_memory_MB")


def load_groups(path):
    with open(path) as handle:
        data = json.load(handle)
    groups = defaultdict(dict)
    for bench in data["benchmarks"]:
        provider = bench["extra_info"].get("provider", bench["name"])
        groups[bench["group"]][provider] = bench
    return data.get("machine_info", {}), groups


def _median(rows, provider):
    return rows.get(provider, {}).get("stats", {}).get("median")


def speedups(groups):
    """{group: {provider: (vs reference, vs reference-compiled)}} from the medians."""
    result = {}
    for group, rows in groups.items():
        base, compiled = _median(rows, "reference"), _median(rows, "reference-compiled")
        result[group] = {
            provider: (base / bench["stats"]["median"] if base else None,
                       compiled / bench["stats"]["median"] if compiled else None)
            for provider, bench in rows.items()
        }
    return result


def markdown(groups):
    header = ["benchmark", "provider", "median (ms)", "vs reference", "vs reference-compiled", *EXTRA_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 2)]
    ratios = speedups(groups)
    for group in sorted(groups):
        rows = groups[group]
        for provider, bench in sorted(rows.items(), key=lambda item: item[1]["stats"]["median"]):
            versus = [f"{r:.2f}x" if r else "" for r in ratios[group][provider]]
            extra = [str(bench["extra_info"].get(column, "")) for column in EXTRA_COLUMNS]
            cells = [group, provider, f"{bench['stats']['median'] * 1e3:.2f}", *versus, *extra]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def recorded_tables(folder=RESULTS):
    """{table id: (results file name, its machine dict, the table)} of every results file."""
    tables = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        with open(path) as handle:
            record = json.load(handle)
        for table in record["tables"]:
            if table["id"] in tables:
                raise ValueError(f"{path}: table id {table['id']!r} is also in {tables[table['id']][0]}")
            tables[table["id"]] = (os.path.basename(path), record, table)
    return tables


def _cell(value):
    return "" if value is None else str(value)


def _rows(columns, rows):
    numeric = [all(isinstance(row[i], (int, float)) for row in rows if row[i] is not None) for i in range(len(columns))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "".join("---:|" if n else "---|" for n in numeric)]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return lines


def _targets(path):
    with open(os.path.join(ROOT, path)) as handle:
        targets = json.load(handle)
    rows = []
    for t in targets:
        verdict = "held" if t["held"] else f"missed: {t['measured'] / t['at_least']:.0%} of the target"
        rows.append([f"{t['benchmark']}: {t['figure']}", t["provider"], t["at_least"], f"{t['measured']:.3g}", verdict])
    return _rows(["target", "provider", "needed", "measured", "verdict"], rows)


def render(table_id, tables, folder=ROOT):
    """One recorded table as markdown (title, machine, data file linked from folder, command, rows, note)."""
    name, record, table = tables[table_id]
    link = os.path.relpath(os.path.join(RESULTS, name), folder)
    lines = [f"**{table['title']}.** {record['machine']}; {record['software']}; data: [`{name}`]({link})",
             "", "```bash", table["command"], "```", ""]
    if "pytest_benchmark" in table:
        lines.append(markdown(load_groups(os.path.join(ROOT, table["pytest_benchmark"]))[1]))
    elif "targets_json" in table:
        lines += _targets(table["targets_json"])
    else:
        lines += _rows(table["columns"], table["rows"])
    if table.get("note"):
        lines += ["", table["note"]]
    return "\n".join(lines) + "\n"


def update(path, tables, check=False):
    """Rewrites (or, with check, compares) the marked tables of a markdown file; True if current."""
    with open(path) as handle:
        text = handle.read()
    folder = os.path.dirname(os.path.abspath(path))
    new = MARKER.sub(lambda m: m.group(1) + render(m.group(2), tables, folder) + m.group(4), text)
    if not check and new != text:
        with open(path, "w") as handle:
            handle.write(new)
    return new == text


def bar_chart(groups, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = speedups(groups)
    names = sorted(g for g in ratios if any(v[0] for v in ratios[g].values()))
    providers = sorted({p for g in names for p in ratios[g] if p != "reference"})
    figure, axis = plt.subplots(figsize=(10, 0.6 * len(names) * max(1, len(providers)) / 2 + 1.5))
    height = 0.8 / max(1, len(providers))
    for i, provider in enumerate(providers):
        values = [ratios[g].get(provider, (0, 0))[0] or 0 for g in names]
        axis.barh([y + i * height for y in range(len(names))], values, height, label=provider)
    axis.axvline(1.0, color="black", linewidth=0.8)
    axis.set_yticks([y + 0.4 - height / 2 for y in range(len(names))], names, fontsize=7)
    axis.set_xscale("log")
    axis.set_xlabel("speedup vs the reference path, eager (median; log scale)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file", nargs="?", help="a pytest-benchmark JSON file (default: every recorded table)")
    parser.add_argument("--png", help="also write a bar chart of the speedups here")
    parser.add_argument("--update", nargs="+", metavar="MD", help="rewrite the marked tables of these files")
    parser.add_argument("--check", nargs="+", metavar="MD", help="exit 1 if a marked table of these files is stale")
    args = parser.parse_args()
    if args.json_file is None:
        tables = recorded_tables()
        if args.update or args.check:
            stale = [p for p in args.update or args.check if not update(p, tables, check=bool(args.check))]
            if args.check and stale:
                sys.exit(f"stale tables in {', '.join(stale)}: run python benchmarks/report.py --update {' '.join(stale)}")
        else:
            print("\n".join(render(t, tables) for t in tables))
        return
    machine, groups = load_groups(args.json_file)
    print(f"Machine: {machine.get('cpu', {}).get('brand_raw', '?')}, {machine.get('cpu', {}).get('count', '?')} cores\n")
    gpus = {b["extra_info"]["device"] for rows in groups.values() for b in rows.values() if "device" in b["extra_info"]}
    if gpus:
        print(f"GPU: {', '.join(sorted(gpus))}\n")
    print(markdown(groups))
    if args.png:
        bar_chart(groups, args.png)
        print(f"\nchart: {args.png}")


if __name__ == "__main__":
    main()
