"""The figures of docs/results.md, printed from the outputs of ``docs/reproduce.sh``.

    python docs/figures.py repro        # after: bash docs/reproduce.sh sweeps grid

Reads each sweep's ``summary.json`` and ``sweep.csv`` (and ``/usr/bin/time -v``'s lines in
the logs) and prints the tables and counts the page quotes, section by section, so that
every number there is read off a run, not typed.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

SWEEPS = ("sigmoid", "logits", "vary_sigmoid", "vary_logits")
NAMES = {"atten": "attention", "linear": "linear"}
MINUS = "\u2212"


def signed(x: float, digits: int = 3) -> str:
    text = f"{x:+.{digits}f}"
    return text.replace("-", MINUS)


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def wall(log: Path) -> str:
    """'m:ss wall, N s user, peak M MB' from a /usr/bin/time -v log."""
    text = log.read_text() if log.exists() else ""
    elapsed = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", text)
    user = re.search(r"User time \(seconds\): (\S+)", text)
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if not (elapsed and user and peak):
        return "(no timing)"
    return f"{elapsed[1]} wall, {float(user[1]):.0f} s user, peak {int(peak[1]) // 1024} MB"


def rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "sweep.csv", newline="") as f:
        return list(csv.DictReader(f))


def seed_sweep(root: Path, name: str) -> None:
    folder = root / name
    summary = json.loads((folder / "summary.json").read_text())
    print(f"## {name}: {wall(root / f'{name}.log')}")
    print("| net | train accuracy, mean ± std (median) | val | test | success (train >= 0.9) |")
    print("| --- | --- | --- | --- | --- |")
    for cell in summary["cells"]:
        acc, s = cell["accuracy"], cell["success"]
        t = acc["train"]
        train = f"{t['mean']:.3f} ± {t['std']:.3f} ({t['median']:.3f})"
        val = f"{acc['val']['mean']:.3f} ± {acc['val']['std']:.3f}"
        test = f"{acc['test']['mean']:.3f} ± {acc['test']['std']:.3f}"
        success = (
            f"{s['successes']} / {s['n']} = {pct(s['rate'])}"
            f" (95% CI {pct(s['low'])} to {pct(s['high'])})"
        )
        print(f"| {NAMES[cell['arch']]} | {train} | {val} | {test} | {success} |")
    for p in summary["paired"]:
        print(
            f"paired: wins {pct(p['wins'])}, ties {pct(p['ties'])}, losses {pct(p['losses'])};"
            f" mean {signed(p['mean_difference'])}"
            f" (95% CI {signed(p['low'])} to {signed(p['high'])})"
        )
    for cell in summary["cells"]:
        b = cell.get("beats_logistic")
        if b:
            print(
                f"beats LogisticRegression: {NAMES[cell['arch']]} {pct(b['share'])}"
                f" (95% CI {pct(b['low'])} to {pct(b['high'])})"
            )
    for arch in ("atten", "linear"):
        mine = [r for r in rows(folder) if r["arch"] == arch]
        train = [round(float(r["train_accuracy"]), 3) for r in mine]
        tests = {round(float(r["test_accuracy"]), 3) for r in mine}
        print(
            f"{NAMES[arch]}: {sum(t <= 0.35 for t in train)} single-class (train <= 0.35),"
            f" {sum(abs(t - 0.65) < 0.005 for t in train)} on the 0.65 plateau;"
            f" test accuracies taken: {len(tests)}"
        )
    print()


def grid(root: Path) -> None:
    folder = root / "grid"
    summary = json.loads((folder / "summary.json").read_text())
    cells = {(c["arch"], c["head"], c["lr"], c["weight_decay"]): c for c in summary["cells"]}
    lrs = sorted({c["lr"] for c in summary["cells"]})
    wds = sorted({c["weight_decay"] for c in summary["cells"]})
    heads = ("sigmoid", "logits")
    print(f"## grid: {wall(root / 'grid.log')}")
    for line in (root / "grid.log").read_text().splitlines():
        if line.startswith("devices:") or (" in " in line and "nets x" in line):
            print(line)
    print("success, attention / linear")
    for head in heads:
        for wd in wds:
            parts = [
                f"{pct(cells['atten', head, lr, wd]['success']['rate'])} /"
                f" {pct(cells['linear', head, lr, wd]['success']['rate'])}"
                for lr in lrs
            ]
            print(f"| {head} | {wd:g} | " + " | ".join(parts) + " |")
    paired = {(p["head"], p["lr"], p["weight_decay"]): p for p in summary["paired"]}
    print("paired test accuracy, attention - linear")
    excluded = wins = losses = 0
    for head in heads:
        for wd in wds:
            parts = []
            for lr in lrs:
                p = paired[head, lr, wd]
                out = p["low"] > 0 or p["high"] < 0
                excluded += out
                wins += p["low"] > 0
                losses += p["high"] < 0
                mean = signed(p["mean_difference"])
                parts.append(
                    (f"**{mean}**" if out else mean)
                    + f" ({signed(p['low'])} to {signed(p['high'])})"
                )
            print(f"| {head} | {wd:g} | " + " | ".join(parts) + " |")
    print(
        f"intervals excluding 0: {excluded} of {len(paired)} ({wins} attention better,"
        f" {losses} linear better, {len(paired) - excluded} ties)"
    )
    for head in heads:
        low = [c for k, c in cells.items() if k[1] == head and k[3] <= 1e-3]
        for arch in ("atten", "linear"):
            mine = [c for c in low if c["arch"] == arch]
            got = sum(c["success"]["successes"] for c in mine)
            total = sum(c["success"]["n"] for c in mine)
            rates = [c["success"]["rate"] for c in mine]
            print(
                f"{head}, wd <= 1e-3, {NAMES[arch]}: {got} of {total} succeed"
                f" ({pct(min(rates))} to {pct(max(rates))} per cell)"
            )
    blog = cells["atten", "sigmoid", 0.005, 0.001]["success"]
    print(
        f"blog's cell, attention: {pct(blog['rate'])} (95% CI {pct(blog['low'])} to"
        f" {pct(blog['high'])})"
    )
    diverged = sum(c.get("diverged", 0) for c in summary["cells"])
    print(f"diverged: {diverged}")
    print()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python docs/figures.py REPRO_FOLDER", file=sys.stderr)
        return 2
    root = Path(argv[0])
    for name in SWEEPS:
        if (root / name / "summary.json").exists():
            seed_sweep(root, name)
    if (root / "grid" / "summary.json").exists():
        grid(root)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
