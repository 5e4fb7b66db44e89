import subprocess
import sys

from typer.testing import CliRunner

from mice.cli import app

runner = CliRunner()


def test_mask_show_prints_table():
    res = runner.invoke(app, ["mask", "show", "mask3", "--k", "2", "--num-layers", "6"])
    assert res.exit_code == 0, res.output
    assert "layers 0-1" in res.output and "layers 2-5" in res.output and "sep2" in res.output


def test_mask_show_file_and_tidy(tmp_path):
    from mice import InteractionMask

    path = InteractionMask.from_preset("sparse_ce", 4).save(tmp_path / "m.json")
    res = runner.invoke(app, ["mask", "show", str(path), "--tidy"])
    assert res.exit_code == 0 and "q->d" in res.output and len(res.output.strip().splitlines()) == 1 + 4 * 25


def test_bad_input_is_one_clear_line_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    res = subprocess.run([sys.executable, "-m", "mice", "mask", "show", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and "bad.json:1:" in res.stderr and res.stderr.startswith("error:")


def test_score_from_file_with_mask(tiny_bert, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("sort an array\treturn a sorted copy\nmean of values\tcompute the mean\n")
    plain = runner.invoke(app, ["score", "--model", str(tiny_bert), str(pairs)])
    masked = runner.invoke(app, ["score", "--model", str(tiny_bert), "--mask", "mask2", str(pairs)])
    assert plain.exit_code == 0 and masked.exit_code == 0, plain.output + masked.output
    a = [float(x) for x in plain.output.split()]
    b = [float(x) for x in masked.output.split()]
    assert len(a) == len(b) == 2 and a != b
    from mice import HookedCrossEncoder

    ref = HookedCrossEncoder.from_pretrained(tiny_bert).predict([("sort an array", "return a sorted copy")])
    assert abs(a[0] - float(ref[0])) < 1e-5


def test_score_reports_bad_line(tiny_bert, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("good\tline\nno tab here\n")
    res = subprocess.run(
        [sys.executable, "-m", "mice", "score", "--model", str(tiny_bert), str(pairs)], capture_output=True, text=True
    )
    assert res.returncode == 2 and "pairs.tsv:2:" in res.stderr and "Traceback" not in res.stderr
