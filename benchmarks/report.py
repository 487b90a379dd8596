"""Turns a pytest-benchmark JSON file into a markdown table of medians and speedups against the
reference path, and optionally a PNG bar chart of the speedups (needs matplotlib).

    pytest benchmarks/ --benchmark-only -m quick --benchmark-json=bench.json
    python benchmarks/report.py bench.json [--png speedups.png]
"""

import argparse
import json
from collections import defaultdict

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
    parser.add_argument("json_file")
    parser.add_argument("--png", help="also write a bar chart of the speedups here")
    args = parser.parse_args()
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
