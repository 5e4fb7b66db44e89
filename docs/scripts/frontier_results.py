"""Write a frontier's docs table and figure from its saved results alone.

`python docs/scripts/frontier_results.py FRONTIER_FOLDER NAME [--tolerance 0.05]` draws
`docs/img/frontier-NAME.png` from `frontier.parquet` and prints the markdown table (every configuration on each test
set: nDCG@10 with its 95% CI, the upper bound of the relative loss against Baseline ft, whether it qualifies, the
Pareto front) and the fidelity-vs-test Spearman rho with its bootstrap CI (from `frontier.json`), to paste into
`docs/results.md`. `--validation FOLDER` (repeatable) adds the table of a search's validation against that frontier
(`validation.csv` of `mice ablate joint --validate` or `mice demo --validate-search`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ablations.regret import validity_text  # noqa: E402
from figures.frontier import plot_frontier  # noqa: E402
from mice.files import read_table  # noqa: E402


def _ci(r, m: str) -> str:
    return f"{r[m]:.4f} [{r[m + '_low']:.3f}, {r[m + '_high']:.3f}]"


def _sd(r) -> str:
    sd = r.get("ndcg@10_seed_sd")
    return "" if sd is None or sd != sd else f"{sd:.3f}"


def markdown(table, tolerance: float) -> str:
    lines = []
    for domain, t in table.groupby("domain", sort=False):
        lines += [
            f"**{domain}** ({int(t['queries'].max())} queries)",
            "",
            "| configuration | cost (b) | seeds | fidelity | nDCG@10 [95% CI] | seed sd | loss upper bound "
            "| qualifies | Pareto |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for _, r in t.sort_values(["cost", "a"], ascending=[True, False], na_position="last").iterrows():
            up = r.get("loss_high")
            has_up = up == up and up is not None
            qual = "collapsed" if bool(r.get("collapsed")) else ("yes" if has_up and up <= tolerance else "")
            lines.append(
                f"| {r['configuration']} | {int(r['cost'])} | {int(r['seeds'])} | {r['fidelity']:.3f} | "
                f"{_ci(r, 'ndcg@10')} | {_sd(r)} | {f'{up:+.1%}' if has_up else ''} | "
                f"{qual if r['kind'] == 'mice' else ''} | {'yes' if bool(r.get('pareto')) else ''} |"
            )
        lines.append("")
    return "\n".join(lines)


def validation_markdown(picks) -> str:
    """One row per procedure: draws, its picks, misses, median and largest regret, extra cost and compute."""
    from collections import Counter

    from ablations.regret import summarize

    lines = [
        "| procedure | draws | picks | same b | misses | median regret [max] | median extra cost | compute share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, r in summarize(picks).iterrows():
        g = picks[picks["procedure"] == r["procedure"]]
        chosen = ", ".join(f"{p} × {n}" for p, n in Counter(g["pick"].fillna("no MICE")).most_common())
        regret = (
            "n/a" if r["median_regret"] != r["median_regret"] else (f"{r['median_regret']:.3f} [{r['max_regret']:.3f}]")
        )
        extra = "n/a" if r["median_extra_cost"] != r["median_extra_cost"] else f"{r['median_extra_cost']:+g}"
        shares = g["compute_share"]
        share = f"{shares.min():.1%}-{shares.max():.1%}" if shares.max() > shares.min() else f"{shares.max():.1%}"
        lines.append(
            f"| {r['procedure']} | {int(r['replicates'])} | {chosen} | {int(r['same_b'])} | {int(r['misses'])} "
            f"| {regret} | {extra} | {share} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("name")
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--img", type=Path, default=ROOT / "docs" / "img", help="folder of the figure")
    ap.add_argument("--validation", type=Path, action="append", default=[], help="a folder with validation.csv")
    args = ap.parse_args(argv)
    table = read_table(args.folder / "frontier.parquet")
    meta = json.loads((args.folder / "frontier.json").read_text())
    paths = plot_frontier(table, args.img / f"frontier-{args.name}", formats=("png",))
    print(f"{meta['runs_finished']} of {meta['runs_total']} runs; figure {paths[0]}\n")
    print(markdown(table, args.tolerance))
    print("| test set | configurations | n | Spearman rho [95% CI] |\n|---|---|---|---|")
    if "fidelity_validity" not in meta:
        raise SystemExit(f"{args.folder / 'frontier.json'}: no fidelity_validity (rerun `mice ablate frontier`)")
    for v in meta["fidelity_validity"]:
        print(f"| {v['domain']} | {v['configurations']} | {v['n']} | {validity_text(v)} |")
    for folder in args.validation:
        print(f"\n{folder}:\n")
        print(validation_markdown(read_table(folder / "validation.csv")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
