import json

import numpy as np
import pytest

from mice import InteractionMask
from mice.errors import MaskError
from mice.segments import REAL_SEGMENTS, SEG

S = REAL_SEGMENTS  # cls q sep1 d sep2


def table(rows: dict[str, str]) -> np.ndarray:
    """Hand-written 5x5 expectation: rows[a] is a string over (cls q sep1 d sep2), '1' = a attends b."""
    return np.array([[c == "1" for c in rows[a]] for a in S])


def real(mask, layer):
    n = SEG["pad"]
    return mask.tables[layer, :n, :n]


FULL = table({"cls": "11111", "q": "11111", "sep1": "11111", "d": "11111", "sep2": "11111"})
MASK0 = table({"cls": "11111", "q": "01110", "sep1": "00100", "d": "01011", "sep2": "00001"})
MASK1 = table({"cls": "11100", "q": "01110", "sep1": "00100", "d": "01011", "sep2": "00001"})
MASK2 = table({"cls": "11100", "q": "01110", "sep1": "00100", "d": "00011", "sep2": "00001"})
MASK2_NO_QD = table({"cls": "11100", "q": "01100", "sep1": "00100", "d": "00011", "sep2": "00001"})
PRETTR_LOW = table({"cls": "11100", "q": "11100", "sep1": "11100", "d": "00011", "sep2": "00011"})
SPARSE = table({"cls": "11111", "q": "01100", "sep1": "01100", "d": "11111", "sep2": "11111"})


@pytest.mark.parametrize(
    "name,params,expected",
    [
        ("none", {}, [FULL] * 6),
        ("mask0", {}, [MASK0] * 6),
        ("mask1", {}, [MASK1] * 6),
        ("mask2", {}, [MASK2] * 6),
        ("mask3", {"k": 2}, [MASK2_NO_QD] * 2 + [MASK2] * 4),
        ("mask3", {"k": 6}, [MASK2_NO_QD] * 6),
        ("prettr", {"k": 3}, [PRETTR_LOW] * 3 + [FULL] * 3),
        ("sparse_ce", {}, [SPARSE] * 6),
    ],
)
def test_preset_tables_match_hand_written(name, params, expected):
    mask = InteractionMask.from_preset(name, num_layers=6, **params)
    for layer in range(6):
        np.testing.assert_array_equal(real(mask, layer), expected[layer], err_msg=f"{name} layer {layer}")
    assert not mask.tables[:, :, SEG["pad"]].any()  # pad never attended


def test_json_round_trip(tmp_path):
    mask = InteractionMask.from_preset("mask3", num_layers=6, k=2)
    path = mask.save(tmp_path / "m.json")
    again = InteractionMask.load(path)
    assert again == mask and again.name == mask.name and again.rules == mask.rules
    obj = json.loads(path.read_text())
    assert obj["format"] == "mice-mask/2" and obj["num_layers"] == 6


def test_design_doc_example_loads(tmp_path):
    obj = {
        "format": "mice-mask/1",
        "name": "mask1",
        "num_layers": 6,
        "rules": [
            {"block": ["q->cls", "d->cls", "sep1->*", "sep2->*"], "layers": "all"},
            {"allow": ["sep1->sep1", "sep2->sep2"], "layers": "all"},
            {"block": ["cls->d", "cls->sep2"], "layers": [0, 6]},
        ],
        "provenance": {"derived_from": "ablation.csv", "tolerance": 0.01},
    }
    (tmp_path / "m.json").write_text(json.dumps(obj))
    m = InteractionMask.load(tmp_path / "m.json")
    assert not m.allowed(0, "q->cls") and m.allowed(0, "q->sep2") and not m.allowed(5, "cls->d")


def test_from_tables_reproduces_any_mask():
    for name, params in [("mask3", {"k": 2}), ("prettr", {"k": 1}), ("sparse_ce", {})]:
        m = InteractionMask.from_preset(name, 6, **params)
        assert InteractionMask.from_tables(m.tables) == m


def test_with_blocked_builds_mask3_from_mask2():
    m2 = InteractionMask.from_preset("mask2", 6)
    assert m2.with_blocked("q->d", range(0, 2)) == InteractionMask.from_preset("mask3", 6, k=2)


@pytest.mark.parametrize(
    "rules,match",
    [
        ([{"block": ["q->x"]}], r"rule 0 .*unknown segment 'x'"),
        ([{"block": ["q-d"]}], r"rule 0 .*malformed path"),
        ([{"block": ["q->d"], "layers": [4, 9]}], r"rule 0 .*outside the model's 6 layers"),
        (
            [{"allow": ["q->d"]}, {"block": ["q->*"], "layers": [2, 3]}],
            r"rule 1: segment 'q' is left with nothing .* layer 2",
        ),
        ([{"block": ["q->d"], "allow": ["q->q"]}], r"rule 0 .*exactly one of"),
        ([{"block": ["q->d"], "layer": "all"}], r"unknown keys"),
    ],
)
def test_invalid_rules_name_the_rule(rules, match):
    with pytest.raises(MaskError, match=match):
        InteractionMask(6, rules)


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "mice-mask/1",\n "rules": [,]}')
    with pytest.raises(MaskError, match=r"bad.json:2:\d+: malformed JSON"):
        InteractionMask.load(bad)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"format": "mice-mask/0", "num_layers": 6, "rules": []}))
    with pytest.raises(MaskError, match="mice-mask/0.*not supported"):
        InteractionMask.load(old)
    with pytest.raises(MaskError, match="cannot read"):
        InteractionMask.load(tmp_path / "missing.json")
    with pytest.raises(MaskError, match="unknown preset"):
        InteractionMask.from_preset("mask9", 6)


def test_render_and_frame():
    m = InteractionMask.from_preset("mask3", 6, k=2)
    text = m.render()
    assert "layers 0-1" in text and "layers 2-5" in text and "a->b (a attends b)" in text
    df = m.to_frame()
    assert len(df) == 6 * 25
    row = df[(df.layer == 0) & (df.path == "q->d")].iloc[0]
    assert not row.allowed
    assert df[(df.layer == 2) & (df.path == "q->d")].iloc[0].allowed


def test_parse_specs():
    assert InteractionMask.parse("mask3:k=2", 6) == InteractionMask.from_preset("mask3", 6, k=2)
    assert InteractionMask.parse("mask3(2)", 6) == InteractionMask.from_preset("mask3", 6, k=2)
