"""Fuzz-style check of the input edge (issue 17): hundreds of generated malformed mask files, dataset lines, run
lines and numeric option values, each through the real `mice` entry point (in-process, for speed). Every case
must end with exit code 2, exactly one `error:` line, no traceback, and no output file under its final name."""
import io
import json
import random
import sys
from contextlib import redirect_stderr, redirect_stdout


from mice.validate import CHOICES, RANGES

from cli_checks import assert_one_error

from test_data import write_beir_folder


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
    cases = ["", "{", "[]", "null", "42", '"mask"', "{\"format\": 1}", json.dumps({**good, "format": "mice-mask/9"})]
    bad_values = [None, 5, -1, 2.5, True, "", "q", "q->", "->d", "x->y", "q->pad", [], [5], [None], {}, {"a": 1},
                  ["q->d", 3], "all", [0, 99], {"start": 1, "end": 0}, {"start": "a", "end": 2}, [-1]]
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
        rule = {rng.choice(["block", "allow", "deny", "layers"]): rng.choice(bad_values) for _ in range(rng.randint(1, 3))}
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
        code, err = run_main(["mask", "show", f])
        check(code, err, f"mask case {i} {text!r}", must_mention=str(f))


CORPUS_LINES = ['{"_id": "dx", "text": ', "not json", "[]", '{"text": "no id"}',
                '{"_id": "", "text": "x"}', '"just a string"', "{}",
                '{"_id": "dx", "title": [], "text": "x"}', '{"_id": null, "text": "x"}']
QUERY_LINES = ['{"_id": "qx"', '{"text": "x"}', '{"_id": "q x", "text": "y"}', "1", '{"_id": ["q"], "text": "x"}']
QREL_LINES = ["q1\td1", "q1\td1\tx", "q1 d1 1 extra\tmore", "q1\t\t1", "q1\td1\t1.5.2"]


def test_malformed_dataset_lines(tmp_path):
    cases = [("corpus.jsonl", l) for l in CORPUS_LINES] + [("queries.jsonl", l) for l in QUERY_LINES] + \
        [("qrels/test.tsv", l) for l in QREL_LINES]
    for i, (name, line) in enumerate(cases):
        folder = write_beir_folder(tmp_path / f"ds{i}")
        target = folder / name
        target.write_text(target.read_text() + line + "\n")
        code, err = run_main(["data", "info", folder])
        check(code, err, f"dataset case {i} {name}: {line!r}", must_mention=name.split("/")[-1])


RUN_LINES = ["q1 Q0 d1 1", "q1 Q0 d1 x 1.0 t", "q1 Q0 d1 1 nan1 t", "q1 Q0", "q1\tQ0\td1\t1\tabc\tt",
             "q1 Q0 d1 1 1.0 t extra", "q1 Q0 nosuchdoc 1 1.0 t", "Q0 d1 1 1.0 t", "q1 Q0 d1 1.5 1.0 t"]


def test_malformed_run_lines(tmp_path, tiny_bert):
    folder = write_beir_folder(tmp_path / "ds")
    for i, line in enumerate(RUN_LINES):
        run = tmp_path / f"run{i}.trec"
        run.write_text("q1 Q0 d2 1 2.0 t\n" + line + "\n")
        out = tmp_path / f"out{i}.trec"
        code, err = run_main(["rerank", "--model", tiny_bert, "--dataset", folder, "--run", run, "--out", out])
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
            kind = p.bare_type() if callable(getattr(p, "bare_type", None)) else getattr(getattr(p, "type", None),
                                                                                         "name", "")
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
            code, err = run_main([*path, *required, flag, v])
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
            code, err = run_main([*path, *_required_args(cmd, name, existing), flag, v])
            check(code, err, f"{' '.join(path)} {flag} {v!r}", must_mention=flag)
            assert "fp32, bf16, fp16" in err
    assert not [f for f in tmp_path.iterdir() if f != existing]
