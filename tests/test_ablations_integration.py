"""Done-when check: on the packaged MiniLM, fine-tuned for a few steps, `mice probe attention` and
`mice ablate sweep` run on CPU over a small BEIR folder (BM25 first stage)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

DOCS = {
    "sort": "Return a sorted copy of an array, ordered along the given axis with a stable algorithm.",
    "argsort": "Return the indices that would sort an array along the last axis.",
    "mean": "Compute the arithmetic mean of the array elements along the specified axis.",
    "median": "Compute the median of the values along an axis, ignoring the order of the input.",
    "plot": "Plot y versus x as lines and markers on the current axes of the figure.",
    "scatter": "Draw a scatter plot of y versus x with varying marker size and colour.",
    "nodes": "Return a view of the nodes of the graph, with their attribute dictionaries.",
    "edges": "Return a view of the edges of the graph as pairs of nodes.",
    "csr": "A compressed sparse row matrix, efficient for arithmetic and row slicing.",
    "read_csv": "Read a comma-separated values file into a data frame with labelled columns.",
    "concat": "Concatenate data frames along an axis, aligning the other axes by label.",
    "fft": "Compute the one-dimensional discrete Fourier transform of a signal.",
}
QUERIES = {
    "q1": ("sort an array", "sort"),
    "q2": ("average of array values", "mean"),
    "q3": ("draw lines on a figure", "plot"),
    "q4": ("nodes of a graph", "nodes"),
    "q5": ("load a csv file into a table", "read_csv"),
    "q6": ("fourier transform of a signal", "fft"),
}


def _beir(folder):
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n" for k, v in DOCS.items())
    )
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, (t, _) in QUERIES.items())
    )
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, (_, d) in QUERIES.items())
    )
    return folder


def _fine_tune(out):
    """A few listwise steps from the packaged MiniLM (fresh head): enough to be a real, non-random re-ranker."""
    from mice import HookedCrossEncoder

    torch.manual_seed(0)
    model = HookedCrossEncoder.from_pretrained("packaged:minilm", max_length=64)
    model.model.train()
    opt = torch.optim.AdamW(model.model.parameters(), lr=1e-4)
    ids = list(DOCS)
    for step in range(6):
        pairs = []
        for q, (text, pos) in QUERIES.items():
            negs = [d for d in ids if d != pos][step % 3 :: 4][:2]
            pairs += [(text, DOCS[d]) for d in [pos] + negs]
        scores = model(pairs).view(len(QUERIES), 3)
        loss = torch.nn.functional.cross_entropy(scores, torch.zeros(len(QUERIES), dtype=torch.long))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.model.eval()
    model.save_pretrained(out)
    return out


@pytest.mark.integration
def test_probe_and_sweep_run_on_fine_tuned_minilm(tmp_path):
    from typer.testing import CliRunner

    from mice.cli import app

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # other suites share this machine's cores; oversubscribed threads crawl
    try:
        model = _fine_tune(tmp_path / "model")
        beir = _beir(tmp_path / "beir")
        common = [
            "--model",
            str(model),
            "--dataset",
            str(beir),
            "--split",
            "test",
            "--run",
            "bm25",
            "--k",
            "4",
            "--max-queries",
            "3",
        ]
        r = CliRunner()
        res = r.invoke(
            app, ["probe", "attention", *common, "--out", str(tmp_path / "probe.parquet"), "--examples", "1"]
        )
        assert res.exit_code == 0, res.output
        probe = pd.read_parquet(tmp_path / "probe.parquet")
        assert len(probe) == 6 * 13 * 25
        np.testing.assert_allclose(probe.groupby(["layer", "head", "from"])["mass"].sum(), 1.0, atol=1e-4)
        assert (tmp_path / "probe.examples.npz").exists()

        res = r.invoke(app, ["ablate", "sweep", *common, "--out", str(tmp_path / "sweep.parquet")])
        assert res.exit_code == 0, res.output
        sweep = pd.read_parquet(tmp_path / "sweep.parquet")
        assert len(sweep) == 6 * 25 and sweep["status"].isin(["ok", "structural"]).all()
        assert np.isfinite(sweep[["ndcg@10", "rr@10", "mean_abs_dscore", "kendall_tau"]].to_numpy()).all()
        assert (sweep["mean_abs_dscore"] > 1e-4).mean() > 0.5  # knockouts move MiniLM's scores
        last = sweep[(sweep["layer"] == 5) & (sweep["from"] != "cls")]
        assert (last["mean_abs_dscore"] == 0).all()  # in the last layer only [CLS]'s attention reaches the score
        assert (last["status"] == "structural").all() and (sweep["status"] == "structural").sum() == 20
        meta = json.loads((tmp_path / "sweep.meta.json").read_text())
        assert meta["strategy"] == "fast" and len(meta["query_ids"]) == 3 and 3 < meta["n_pairs"] <= 12
        assert len(pd.read_parquet(tmp_path / "sweep.per_query.parquet")) == (150 + 1) * 3

        # attribution patching on the same pairs, checked against the exact sweep (saved tables only)
        res = r.invoke(
            app, ["ablate", "attribute", *common, "--modes", "renorm", "--out", str(tmp_path / "attr.parquet")]
        )
        assert res.exit_code == 0, res.output
        from ablations.attribution import compare_tables, spearman

        attr = pd.read_parquet(tmp_path / "attr.parquet")
        assert len(attr) == 6 * 13 * 25 and (attr["status"] == "structural").sum() == 13 * 20
        check = compare_tables(attr, sweep)
        assert len(check) == 130
        rho = spearman(check, "abs")
        print(
            f"MiniLM fine-tuned: Spearman rho attribution vs exact over 130 cells: mean change "
            f"{spearman(check):.3f}, mean |change| {rho:.3f}"
        )
        assert rho > 0.8
    finally:
        torch.set_num_threads(n)
