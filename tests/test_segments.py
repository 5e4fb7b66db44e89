import pytest
from transformers import AutoTokenizer

from mice.errors import DataError
from mice.segments import SEG, encode_pairs, segment_ids


def names(row):
    inv = {v: k for k, v in SEG.items()}
    return [inv[int(x)] for x in row]


@pytest.mark.parametrize("family", ["bert", "electra", "roberta"])
def test_segments_follow_special_tokens(tiny_models, family):
    tok = AutoTokenizer.from_pretrained(tiny_models[family])
    b = encode_pairs(tok, ["sort an array", "mean"], ["return a sorted copy", "compute"], max_length=64)
    for row, mask in zip(b["segment_ids"], b["attention_mask"]):
        seg = names(row)
        n = int(mask.sum())
        assert seg[0] == "cls" and seg[n - 1] == "sep2" and all(s == "pad" for s in seg[n:])
        # order cls q+ sep1+ d+ sep2: each group contiguous and in order
        compact = [s for i, s in enumerate(seg[:n]) if i == 0 or seg[i - 1] != s]
        assert compact == ["cls", "q", "sep1", "d", "sep2"]
    sep1 = names(b["segment_ids"][0]).count("sep1")
    assert sep1 == (2 if family == "roberta" else 1)  # RoBERTa: both middle separators are sep1


def test_segments_ignore_token_type_ids(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["bert"])
    b = encode_pairs(tok, ["sort an array"], ["return a sorted copy"])
    seg = segment_ids(b["input_ids"], b["attention_mask"], tok)
    assert seg.tolist() == b["segment_ids"].tolist()
    assert names(seg[0]) == ["cls", "q", "q", "q", "sep1", "d", "d", "d", "d", "sep2"]


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_truncation_keeps_specials_and_counts_cut(tiny_models, family):
    tok = AutoTokenizer.from_pretrained(tiny_models[family])
    long_doc = "value " * 100
    full = len(tok("sort an array", long_doc)["input_ids"])
    b = encode_pairs(tok, ["sort an array", "mean"], [long_doc, "compute the mean"], max_length=16)
    assert b["input_ids"].shape[1] == 16
    assert b.n_truncated == full - 16
    seg = names(b["segment_ids"][0])
    assert seg[0] == "cls" and seg[-1] == "sep2" and "sep1" in seg and "d" in seg


def test_empty_document_still_has_both_separators(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["bert"])
    b = encode_pairs(tok, ["query words"], [""])
    assert names(b["segment_ids"][0]) == ["cls", "q", "q", "sep1", "sep2"]


def test_not_a_pair_is_refused(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["bert"])
    enc = tok(["just one text"], return_tensors="pt")
    with pytest.raises(DataError, match="row 0"):
        segment_ids(enc["input_ids"], enc["attention_mask"], tok)
