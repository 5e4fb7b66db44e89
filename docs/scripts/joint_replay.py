"""Replay the finals of finished joint-search draws under smaller budgets, from their saved measurements alone.

`python docs/scripts/joint_replay.py FRONTIER JOINT` reads every JOINT/draw-*/joint.json, rebuilds its pools and
decides again among the same finalists with fewer seeds, a random part of the screening pool or of the held-out
queries, or on the held-out dev queries alone (without the --confirm-extra sets). Nothing trains: a missing
measurement is an error. Prints a markdown table of picks per draw; `--confirmations` prints instead every
finalist's confirmation on the whole held-out pool, its dev part and its extra part. FRONTIER may be `none`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

VARIANTS = {  # name: (seeds, screening queries, held-out queries, held-out part); None: as run
    "as run": (None, None, None, None),
    "2 seeds": (2, None, None, None),
    "300 screening": (None, 300, None, None),
    "2 seeds, 300 screening": (2, 300, None, None),
    "150 held out": (None, None, 150, None),
    "dev only": (None, None, None, "dev"),  # the held-out dev queries without the --confirm-extra sets
}


def _no_training(*args, **kwargs):
    raise RuntimeError("the replay would train: a measurement is missing")


def _load(folder: Path):
    """The finished draw in `folder`, rebuilt from its files: (search, config, final steps, finalists, cut rows)."""
    import pandas as pd

    from ablations.joint import CONTROL, JointConfig, JointSearch, grid

    meta = json.loads((folder / "joint.json").read_text())
    cfg = dict(meta["config"])
    cfg.update(seeds=tuple(cfg["seeds"]), fidelity=tuple(cfg["fidelity"]), keep_checkpoints=True)
    cfg["confirm_extra"] = tuple(cfg.get("confirm_extra", ()))
    s = JointSearch(JointConfig(**cfg), folder)
    s.train_to = _no_training
    s._setup()
    s._references()
    t = pd.read_parquet(folder / "joint.parquet")
    names = set(t[t["finalist"] & (t["candidate"] != CONTROL)]["candidate"])
    finalists = {c.name: c for c in grid(s.num_layers) if c.name in names}
    cut = t[~t["finalist"] & ~t["candidate"].isin(names | {CONTROL})]
    return s, cfg, int(meta["final_steps"]), finalists, cut


def _dev_part(s, cfg):
    """Positions of the held-out dev queries in the confirmation pool (the rest come from --confirm-extra)."""
    import numpy as np

    held_ids = list(dict.fromkeys(s.confirm_pool.frame["query_id"]))
    return np.flatnonzero([q.startswith(f"{cfg['dataset']}@{cfg['split']}:") for q in held_ids])


def confirmations(folder: Path) -> list[dict]:
    """Every finalist's relative loss against the control on the whole confirmation pool, its dev part and its
    extra part (mean, one-sided upper bound, bootstrap standard error, queries), beside its fidelity loss."""
    import numpy as np

    from ablations.decision import relative_loss

    s, cfg, steps, finalists, _ = _load(folder)
    dev = _dev_part(s, cfg)
    every = np.arange(len(s.groups["confirm"]))
    parts = {"all": every, "dev": dev, "extra": np.setdiff1d(every, dev)}
    screen = s._values(s.control, s.seeds(), steps, "screen")
    held = s._values(s.control, s.seeds(), steps, "confirm", cfg["confirm_metric"])
    rows = []
    for name, cand in finalists.items():
        fid = relative_loss(s._values(cand, s.seeds(), steps, "screen"), screen, alpha=cfg["alpha"])
        row = {"draw": int(cfg["draw"]), "finalist": name, "fidelity": (fid.mean, fid.upper)}
        mine = s._values(cand, s.seeds(), steps, "confirm", cfg["confirm_metric"])
        for part, idx in parts.items():
            if len(idx) >= 2:
                loss = relative_loss(mine[idx], held[idx], alpha=cfg["alpha"])
                row[part] = (loss.mean, loss.upper, (loss.upper - loss.lower) / (2 * 1.645), len(idx))
        rows.append(row)
    return rows


def replay(folder: Path, table, variants=VARIANTS) -> list[dict]:
    """One row per variant for the draw in `folder`: its pick and its regret against the frontier `table`."""
    import numpy as np

    from ablations.decision import choose
    from ablations.regret import NO_MICE, regret

    s, cfg, steps, finalists, cut = _load(folder)
    dev = _dev_part(s, cfg)
    rows = []
    for name, (k, n_screen, n_held, part) in variants.items():
        rng = np.random.default_rng(int(cfg["draw"]))
        seeds = s.seeds()[:k] if k else s.seeds()
        n_s, n_h = len(s.groups["screen"]), len(s.groups["confirm"])
        si = np.sort(rng.choice(n_s, n_screen, replace=False)) if n_screen else np.arange(n_s)
        hi = np.sort(rng.choice(n_h, n_held, replace=False)) if n_held else np.arange(n_h)
        hi = dev if part == "dev" else hi

        def values(cand, pool, measure, idx, seeds=seeds):
            return s._values(cand, seeds, steps, pool, measure)[idx]

        cands = [
            {"name": n, "a": c.a, "b": c.b, "values": values(c, "screen", "fidelity", si)} for n, c in finalists.items()
        ]
        held = values(s.control, "confirm", cfg["confirm_metric"], hi)
        choice = choose(
            cands,
            values(s.control, "screen", "fidelity", si),
            cfg["tolerance"],
            confirm=lambda c: (values(finalists[c["name"]], "confirm", cfg["confirm_metric"], hi), held),
            alpha=cfg["alpha"],
        )
        pick = finalists.get(choice.chosen)
        r = regret(table, pick and pick.a, pick and pick.b, cfg["tolerance"]) if table is not None else {}
        r = {"pick": choice.chosen or NO_MICE, "regret": None, **r}
        total = int(cut.groupby("candidate")["steps"].max().sum()) + (len(finalists) + 1) * steps * len(seeds)
        rows.append(
            {"draw": int(cfg["draw"]), "variant": name, "pick": r["pick"], "regret": r["regret"], "steps": total}
        )
    return rows


def main(argv=None) -> int:
    import pandas as pd

    from ablations.regret import load_frontier

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("frontier", type=Path, help="a frontier folder, or none: the picks without their regret")
    ap.add_argument("joint", type=Path, help="a folder of draw-*/ joint searches")
    ap.add_argument("--confirmations", action="store_true", help="every finalist's confirmation, by part")
    args = ap.parse_args(argv)
    if args.confirmations:
        return _print_confirmations(sorted(args.joint.glob("draw-*/joint.json")))
    table = None if str(args.frontier) == "none" else load_frontier(args.frontier)[0]
    rows = [r for d in sorted(args.joint.glob("draw-*/joint.json")) for r in replay(d.parent, table)]
    df = pd.DataFrame(rows)
    draws = sorted(df["draw"].unique())
    print("| finals replayed with | " + " | ".join(f"draw {d}" for d in draws) + " | steps |")
    print("|---" * (len(draws) + 2) + "|")
    for name in VARIANTS:
        g = df[df["variant"] == name].set_index("draw")
        picks = " | ".join(str(g.loc[d, "pick"]).replace("MICE-l", "ℓ") for d in draws)
        print(f"| {name} | {picks} | {int(g['steps'].median()):,} |")
    return 0


def _print_confirmations(files) -> int:
    def cell(x):
        return "" if x is None else f"{x[0]:.1%} [{x[1]:.1%}], se {x[2]:.1%}, n = {x[3]}"

    print("| draw | finalist | fidelity loss [upper] | every held-out query | dev part | extra part |")
    print("|---|---|---|---|---|---|")
    for f in files:
        for r in confirmations(f.parent):
            name, fid = r["finalist"].replace("MICE-l", "ℓ"), f"{r['fidelity'][0]:.1%} [{r['fidelity'][1]:.1%}]"
            parts = " | ".join(cell(r.get(p)) for p in ("all", "dev", "extra"))
            print(f"| {r['draw']} | {name} | {fid} | {parts} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
