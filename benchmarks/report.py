"""Turns a pytest-benchmark JSON file into a markdown table of medians and speedups.

    pytest benchmarks/ --benchmark-only -m quick --benchmark-json=bench.json
    python benchmarks/report.py bench.json
"""

import argparse
import json
from collections import defaultdict


def load_groups(path):
    with open(path) as handle:
        data = json.load(handle)
    groups = defaultdict(dict)
    for bench in data["benchmarks"]:
        provider = bench["extra_info"].get("provider", bench["name"])
        groups[bench["group"]][provider] = bench
    return data.get("machine_info", {}), groups


def markdown(groups):
    lines = [
        "| benchmark | provider | median (ms) | GB/s | speedup vs reference | vs reference-compiled |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for group in sorted(groups):
        rows = groups[group]
        base = rows.get("reference", {}).get("stats", {}).get("median")
        compiled = rows.get("reference-compiled", {}).get("stats", {}).get("median")
        for provider, bench in sorted(rows.items(), key=lambda item: item[1]["stats"]["median"]):
            median = bench["stats"]["median"]
            speedup = f"{base / median:.1f}x" if base else ""
            versus_compiled = f"{compiled / median:.1f}x" if compiled else ""
            gbps = bench["extra_info"].get("GB/s", "")
            lines.append(f"| {group} | {provider} | {median * 1e3:.2f} | {gbps} | {speedup} | {versus_compiled} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file")
    args = parser.parse_args()
    machine, groups = load_groups(args.json_file)
    print(f"Machine: {machine.get('cpu', {}).get('brand_raw', '?')}, {machine.get('cpu', {}).get('count', '?')} cores\n")
    gpus = {b["extra_info"]["device"] for rows in groups.values() for b in rows.values() if "device" in b["extra_info"]}
    if gpus:
        print(f"GPU: {', '.join(sorted(gpus))}\n")
    print(markdown(groups))


if __name__ == "__main__":
    main()
