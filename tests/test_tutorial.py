"""Every command of docs/tutorial.md, in order, on a tiny random cross-encoder and a tiny BEIR folder: the
tutorial a newcomer follows is one that runs."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mice.cli import app
from mice.models.testing import tiny_cross_encoder

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"
pytestmark = pytest.mark.usefixtures("one_thread")


def tutorial_commands(text: str) -> list[str]:
    """The `mice …` lines of the page's bash blocks (continuations joined; variable assignments left out)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("mice "):
                commands.append(line)
    return commands


def write_beir(folder: Path, n: int = 60) -> Path:
    """Each query shares three words with its one relevant document; dev and test take half the queries each."""
    from mice.models.testing import _WORDS

    import random

    rng = random.Random(0)
    folder.joinpath("qrels").mkdir(parents=True)
    docs, queries, qrels = {}, {}, {"train": [], "dev": [], "test": []}
    for i in range(n):
        words = rng.sample(_WORDS, 12)
        docs[f"d{i}"] = " ".join(words)
        queries[f"q{i}"] = " ".join(words[:3] + rng.sample(_WORDS, 1))
        qrels[("train", "dev", "test")[i % 3]].append((f"q{i}", f"d{i}"))
    folder.joinpath("corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in docs.items())
    )
    folder.joinpath("queries.jsonl").write_text(
        "".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in queries.items())
    )
    for split, rows in qrels.items():
        folder.joinpath("qrels", f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in rows)
        )
    return folder


def test_the_tutorial_lists_every_step():
    commands = tutorial_commands(TUTORIAL.read_text())
    verbs = [" ".join(shlex.split(c)[1:3]) for c in commands]
    for step in (
        "retrieve bm25",
        "probe attention",
        "ablate sweep",
        "ablate attribute",
        "ablate derive",
        "ablate search",
        "train --mode",
        "index build",
        "rerank --model",
        "evaluate --dataset",
    ):
        assert any(v.startswith(step.split()[0]) and step.split()[1] in c for v, c in zip(verbs, commands)), step


@pytest.mark.integration
def test_the_tutorial_runs(tmp_path, monkeypatch):
    model = tiny_cross_encoder(tmp_path / "model", num_layers=3)
    data = write_beir(tmp_path / "beir")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MICE_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()
    for command in tutorial_commands(TUTORIAL.read_text()):
        argv = [a.replace("$M", str(model)).replace("$D", str(data)) for a in shlex.split(command)[1:]]
        result = runner.invoke(app, argv, catch_exceptions=False)
        assert result.exit_code == 0, f"{command}\n{result.output}"
    for made in (
        "probe.parquet",
        "sweep.parquet",
        "attribution.parquet",
        "mask.json",
        "search/derived.json",
        "mice-model/best",
        "index",
        "ce.trec",
        "mice.trec",
    ):
        assert (tmp_path / made).exists(), made
