"""Fuzz-style check of the input edge: hundreds of generated malformed mask files, dataset lines, run
lines and numeric option values, each through the real `mice` entry point (in-process, for speed). Every case
must end with exit code 2, exactly one `error:` line, no traceback, and no output file under its final name,
within `CASE_LIMIT_S` seconds."""

import io
import json
import random
import sys
import time
from contextlib import redirect_stderr, redirect_stdout


from mice.validate import CHOICES, RANGES

from cli_checks import assert_one_error

from test_data import write_beir_folder


CASE_LIMIT_S = 10.0  # every malformed input is refused well within this (a hang or a huge allocation is not)


def fuzz_case(argv) -> tuple[int, str]:
    """`run_main`, timed: a case that takes `CASE_LIMIT_S` or longer fails, naming its arguments."""
    start = time.perf_counter()
    result = run_main(argv)
    took = time.perf_counter() - start
    assert took < CASE_LIMIT_S, f"{took:.1f} s (limit {CASE_LIMIT_S:.0f} s): mice {' '.join(map(str, argv))[:300]}"
    return result


def run_main(argv) -> tuple[int, str]:
    from mice.cli import main

    err, out = io.StringIO(), io.StringIO()
    old = sys.argv
    sys.argv = ["mice", *map(str, argv)]
    code = None
    try:
        with redirect_stderr(err), redirect_stdout(out):
            main()
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = old
    return code, err.getvalue()


def check(code, stderr, where, must_mention=None):
    assert_one_error(code, stderr, *([must_mention] if must_mention else []), where=where)


def malformed_masks(rng: random.Random) -> list[str]:
    good = {"format": "mice-mask/2", "name": "m", "num_layers": 2, "rules": [{"block": ["q->d"], "layers": "all"}]}
    cases = ["", "{", "[]", "null", "42", '"mask"', '{"format": 1}', json.dumps({**good, "format": "mice-mask/9"})]
    bad_values = [
        None,
        5,
        -1,
        2.5,
        True,
        "",
        "q",
        "q->",
        "->d",
        "x->y",
        "q->pad",
        [],
        [5],
        [None],
        {},
        {"a": 1},
        ["q->d", 3],
        "all",
        [0, 99],
        {"start": 1, "end": 0},
        {"start": "a", "end": 2},
        [-1],
    ]
    for key in ("num_layers", "rules", "name", "provenance"):
        for v in bad_values:
            if key == "name" and isinstance(v, str):
                continue
            cases.append(json.dumps({**good, key: v}))
    for field in ("block", "allow", "layers"):
        for v in bad_values:
            if field == "layers" and v == "all":
                continue
            rule = {"block": ["q->d"], field: v} if field == "layers" else {field: v}
            cases.append(json.dumps({**good, "rules": [rule]}))
    for _ in range(40):  # random rule soup
        rule = {
            rng.choice(["block", "allow", "deny", "layers"]): rng.choice(bad_values) for _ in range(rng.randint(1, 3))
        }
        cases.append(json.dumps({**good, "rules": [rule]}))
    cases.append(json.dumps({**good, "rules": [{"block": ["q->*"]}]}))  # q attends nothing: NaN softmax
    return [c for c in cases if not _valid(c)]  # a generated case that happens to be a valid mask is dropped


def _valid(text: str) -> bool:
    from mice.errors import MaskError
    from mice.masks import InteractionMask

    try:
        InteractionMask.from_dict(json.loads(text))
        return True
    except (MaskError, ValueError):
        return False


def test_malformed_mask_files(tmp_path):
    rng = random.Random(0)
    cases = malformed_masks(rng)
    assert len(cases) >= 100
    for i, text in enumerate(cases):
        f = tmp_path / f"m{i}.json"
        f.write_text(text)
        code, err = fuzz_case(["mask", "show", f])
        check(code, err, f"mask case {i} {text!r}", must_mention=str(f))


CORPUS_LINES = [
    '{"_id": "dx", "text": ',
    "not json",
    "[]",
    '{"text": "no id"}',
    '{"_id": "", "text": "x"}',
    '"just a string"',
    "{}",
    '{"_id": "dx", "title": [], "text": "x"}',
    '{"_id": null, "text": "x"}',
]
QUERY_LINES = ['{"_id": "qx"', '{"text": "x"}', '{"_id": "q x", "text": "y"}', "1", '{"_id": ["q"], "text": "x"}']
QREL_LINES = ["q1\td1", "q1\td1\tx", "q1 d1 1 extra\tmore", "q1\t\t1", "q1\td1\t1.5.2"]


def test_malformed_dataset_lines(tmp_path):
    cases = (
        [("corpus.jsonl", l) for l in CORPUS_LINES]
        + [("queries.jsonl", l) for l in QUERY_LINES]
        + [("qrels/test.tsv", l) for l in QREL_LINES]
    )
    for i, (name, line) in enumerate(cases):
        folder = write_beir_folder(tmp_path / f"ds{i}")
        target = folder / name
        target.write_text(target.read_text() + line + "\n")
        code, err = fuzz_case(["data", "info", folder])
        check(code, err, f"dataset case {i} {name}: {line!r}", must_mention=name.split("/")[-1])


RUN_LINES = [
    "q1 Q0 d1 1",
    "q1 Q0 d1 x 1.0 t",
    "q1 Q0 d1 1 nan1 t",
    "q1 Q0",
    "q1\tQ0\td1\t1\tabc\tt",
    "q1 Q0 d1 1 1.0 t extra",
    "q1 Q0 nosuchdoc 1 1.0 t",
    "Q0 d1 1 1.0 t",
    "q1 Q0 d1 1.5 1.0 t",
]


def test_malformed_run_lines(tmp_path, tiny_bert):
    folder = write_beir_folder(tmp_path / "ds")
    for i, line in enumerate(RUN_LINES):
        run = tmp_path / f"run{i}.trec"
        run.write_text("q1 Q0 d2 1 2.0 t\n" + line + "\n")
        out = tmp_path / f"out{i}.trec"
        code, err = fuzz_case(["rerank", "--model", tiny_bert, "--dataset", folder, "--run", run, "--out", out])
        check(code, err, f"run case {i} {line!r}", must_mention=str(run))
        assert not out.exists()


def _cli_params(keep):
    """(command path, option flag, python name, kind, command) for every option of the CLI `keep(name, kind)`
    selects."""
    import typer

    from mice.cli import app

    group = typer.main.get_command(app)
    found = []

    def walk(cmd, path):
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, path + (name,))
        for p in getattr(cmd, "params", []):
            kind = (
                p.bare_type()
                if callable(getattr(p, "bare_type", None))
                else getattr(getattr(p, "type", None), "name", "")
            )
            kind = {"integer": "int"}.get(kind, kind)
            if keep(p.name, kind) and p.opts and p.opts[0].startswith("--"):
                found.append((path, p.opts[0], p.name, kind, cmd))

    walk(group, ())
    return found


def _numeric_params():
    """(command path, option flag, python name, kind, command) for every numeric option of the CLI."""
    return _cli_params(lambda name, kind: kind in ("int", "float"))


def _required_args(cmd, but: str, existing) -> list:
    required = []
    for p in cmd.params:
        if p.required and p.name != but:
            required += ([p.opts[0]] if p.opts and p.opts[0].startswith("-") else []) + [str(existing)]
    return required


def test_every_numeric_option_has_a_range():
    params = _numeric_params()
    assert len(params) > 30
    missing = sorted({name for _, _, name, _, _ in params if name not in RANGES})
    assert not missing, f"numeric options without a range in mice.validate.RANGES: {missing}"


def test_out_of_range_option_values(tmp_path):
    """Each numeric option, out of its range, with every other required option given: refused by name."""
    existing = tmp_path / "exists.txt"
    existing.write_text("x\n")
    cases = 0
    for path, flag, name, kind, cmd in _numeric_params():
        low, high, inclusive = RANGES[name]
        values = ["abc", "1e999" if kind == "float" else "3.5"]
        if low is not None:
            values += [str(low - 1 if inclusive else low), str(low - 100)]
        if high is not None:
            values.append(str(high + 1))
        required = _required_args(cmd, name, existing)
        for v in values:
            out_files = {f for f in tmp_path.iterdir()}
            code, err = fuzz_case([*path, *required, flag, v])
            check(code, err, f"{' '.join(path)} {flag} {v}", must_mention=flag)
            assert {f for f in tmp_path.iterdir()} == out_files, f"{' '.join(path)} {flag} {v} wrote a file"
            cases += 1
    assert cases >= 100


def test_out_of_choice_option_values(tmp_path):
    """Each choice option (`mice.validate.CHOICES`: `--dtype`, `--compute-dtype`), given a value outside its
    choices, is refused by name before any work, under every command that has it."""
    existing = tmp_path / "exists.txt"
    existing.write_text("x\n")
    params = _cli_params(lambda name, kind: name in CHOICES)
    assert {" ".join(path) for path, *_ in params} >= {"score", "rerank", "index", "index build", "train"}
    for path, flag, name, _, cmd in params:
        for v in ("fp64", "FP16", "", "float16"):
            code, err = fuzz_case([*path, *_required_args(cmd, name, existing), flag, v])
            check(code, err, f"{' '.join(path)} {flag} {v!r}", must_mention=flag)
            assert "fp32, bf16, fp16" in err
    assert not [f for f in tmp_path.iterdir() if f != existing]


# ------------------------------------------------------------------ run, qrels and corpus files, byte-level
_GOOD_RUN = "q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 1.0 t\n"
RUN_FILES = {  # name -> (bytes of the run file, what the one error line must say)
    "bom": (b"\xef\xbb\xbf" + _GOOD_RUN.encode(), "byte-order mark"),
    "latin-1": (_GOOD_RUN.encode() + "q2 Q0 d\xe9 1 1.0 t\n".encode("latin-1"), "not UTF-8"),
    "nan": (b"q1 Q0 d1 1 nan t\n", "finite"),
    "inf": (b"q1 Q0 d1 1 inf t\n", "finite"),
    "-inf": (b"q1 Q0 d1 1 -inf t\n", "finite"),
    "1e999": (b"q1 Q0 d1 1 1e999 t\n", "finite"),
    "duplicate": (_GOOD_RUN.encode() + b"q1 Q0 d1 3 0.5 t\n", "listed twice"),
    "empty": (b"", "empty"),
    "blank": (b"\n\n  \n", "empty"),
    "nul": (b"q1 Q0 d1 1 \x00 t\n", "score"),
}
for _i, _junk in enumerate(["\xff", "\xc3", "\xed\xa0\x80", "\xf8\x88\x80\x80\x80"]):
    RUN_FILES[f"bad-utf8-{_i}"] = (_GOOD_RUN.encode() + b"q3 Q0 d1 1 " + _junk.encode("latin-1") + b" t\n", "not UTF-8")
for _v in ("NaN", "Infinity", "-Infinity", "nan(1)", "+inf", "1e400", "-1e400"):
    RUN_FILES[f"score {_v}"] = (f"q1 Q0 d1 1 {_v} t\n".encode(), "score")


def test_malformed_run_files(tmp_path, tiny_bert):
    folder = write_beir_folder(tmp_path / "ds")
    for i, (name, (data, rule)) in enumerate(sorted(RUN_FILES.items())):
        run = tmp_path / f"run{i}.trec"
        run.write_bytes(data)
        out = tmp_path / f"out{i}.trec"
        code, err = fuzz_case(["rerank", "--model", tiny_bert, "--dataset", folder, "--run", run, "--out", out])
        line = assert_one_error(code, err, str(run), where=f"run file {name}")
        assert rule in line, f"{name}: {line}"
        assert not out.exists()


TABLE_RUNS = {  # CSV runs
    "nan score": "query_id,doc_id,score\nq1,d1,nan\n",
    "text score": "query_id,doc_id,score\nq1,d1,abc\n",
    "inf score": "query_id,doc_id,score\nq1,d1,inf\n",
    "missing column": "query_id,doc_id\nq1,d1\n",
    "duplicate pair": "query_id,doc_id,score\nq1,d1,1\nq1,d1,2\n",
    "not csv": "\x00\x01\x02",
}


def test_malformed_table_runs(tmp_path, tiny_bert):
    folder = write_beir_folder(tmp_path / "ds")
    cases = [(f"{n}.csv", t.encode()) for n, t in TABLE_RUNS.items()] + [
        ("corrupt.parquet", b"PAR1garbagePAR1"),
        ("empty.parquet", b""),
    ]
    for i, (name, data) in enumerate(cases):
        run = tmp_path / name.replace(" ", "-")
        run.write_bytes(data)
        out = tmp_path / f"out{i}.trec"
        code, err = fuzz_case(["rerank", "--model", tiny_bert, "--dataset", folder, "--run", run, "--out", out])
        assert_one_error(code, err, str(run), where=f"table run {name}")
        assert not out.exists()


QRELS_FILES = {
    "relevance 1e400": "q1\t0\td1\t1e400\n",
    "relevance nan": "q1\t0\td1\tnan\n",
    "relevance inf": "q1 0 d1 inf\n",
    "relevance 1.5": "q1 0 d1 1.5\n",
    "latin-1": "q1\t0\td\xe9\t1\n",
    "bom": "\ufeffq1 0 d1 1\n",
}


def test_malformed_qrels_files(tmp_path):
    from test_data import CORPUS, QUERIES

    for i, (name, text) in enumerate(sorted(QRELS_FILES.items())):
        folder = write_beir_folder(tmp_path / f"ds{i}", CORPUS, QUERIES, {"dev": [("q4", "d1", 1)]})
        target = folder / "qrels" / "test.tsv"
        target.write_bytes(text.encode("latin-1" if name == "latin-1" else "utf-8"))
        code, err = fuzz_case(["data", "info", folder])
        assert_one_error(code, err, "test.tsv", where=f"qrels {name}")


def test_corpus_that_is_a_folder_or_not_utf8(tmp_path):
    for i, damage in enumerate(["folder", "latin-1", "bom", "duplicate key"]):
        folder = write_beir_folder(tmp_path / f"ds{i}")
        corpus = folder / "corpus.jsonl"
        if damage == "folder":
            corpus.unlink()
            corpus.mkdir()
        elif damage == "latin-1":
            corpus.write_bytes(corpus.read_bytes() + '{"_id": "d\xe9", "text": "x"}\n'.encode("latin-1"))
        elif damage == "bom":
            corpus.write_bytes(b"\xef\xbb\xbf" + corpus.read_bytes())
        else:
            corpus.write_text(corpus.read_text() + '{"_id": "dz", "_id": "dy", "text": "x"}\n')
        code, err = fuzz_case(["data", "info", folder])
        assert_one_error(code, err, "corpus.jsonl", where=damage)


MASK_BYTES = {
    "latin-1": '{"name": "\xe9"}'.encode("latin-1"),
    "bom": b'\xef\xbb\xbf{"format": "mice-mask/2"}',
    "deep": b"[" * 100000 + b"]" * 100000,
    "duplicate key": b'{"format": "mice-mask/2", "num_layers": 2, "num_layers": 3, "rules": []}',
    "huge layers": b'{"format": "mice-mask/2", "num_layers": 30000000, "rules": []}',
}


def test_hostile_mask_files(tmp_path):
    for i, (name, data) in enumerate(sorted(MASK_BYTES.items())):
        f = tmp_path / f"m{i}.json"
        f.write_bytes(data)
        code, err = fuzz_case(["mask", "show", f])
        check(code, err, f"mask {name}", must_mention=str(f))


def test_partial_records_edited_by_hand_are_refused(tmp_path, tiny_bert):
    """A finished job's partial, rebuilt by a stopped run, then edited: an injected document, a changed score,
    a record without doc_ids, a NaN score. Each refused naming the partial; none reaches the output."""
    import json

    from mice.models.loader import load
    from mice.rank.rerank import rerank, score_batch

    folder = write_beir_folder(tmp_path / "ds")
    run = tmp_path / "run.trec"
    run.write_text("".join(f"q{q} Q0 d{d} {r} {10 - r} t\n" for q in (1, 2, 3) for r, d in enumerate((1, 2, 3))))
    edits = {
        "injected doc": lambda r: {**r, "doc_ids": r["doc_ids"][:-1] + ["d4"]},
        "score 999": lambda r: {**r, "scores": [999.0] + r["scores"][1:]},
        "no doc_ids": lambda r: {k: v for k, v in r.items() if k != "doc_ids"},
        "nan score": lambda r: {**r, "scores": [float("nan")] + r["scores"][1:]},
        "no checksum": lambda r: {k: v for k, v in r.items() if k != "sum"},
        "not an object": lambda r: [r],
    }
    model = load(tiny_bert)
    for i, (name, edit) in enumerate(sorted(edits.items())):
        out = tmp_path / f"out{i}.trec"
        calls = []

        def stop(scorer, batch, batch_size):
            if calls:
                raise KeyboardInterrupt
            calls.append(1)
            return score_batch(scorer, batch, batch_size)

        try:
            rerank(model, folder, "test", run, k=3, out=out, chunk_pairs=3, batch_size=3, score_fn=stop)
        except KeyboardInterrupt:
            pass
        partial = tmp_path / f"out{i}.trec.partial"
        head, rec = partial.read_text().splitlines()[:2]
        partial.write_text(head + "\n" + json.dumps(edit(json.loads(rec))) + "\n")
        code, err = fuzz_case(
            [
                "rerank",
                "--model",
                tiny_bert,
                "--dataset",
                folder,
                "--run",
                run,
                "--out",
                out,
                "--k",
                3,
                "--batch-size",
                3,
            ]
        )
        assert_one_error(code, err, str(partial), where=name)
        assert not out.exists()
