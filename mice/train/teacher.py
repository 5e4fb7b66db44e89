"""Teacher scores for Margin-MSE distillation, computed once per (query, document) and cached in parquet.

The teacher is any scorer spec `mice.models.loader.load` understands (a cross-encoder folder, a hub name,
`biencoder:packaged`, …) or a file of precomputed scores in the MS MARCO distillation format, one triple per
line: `score_pos score_neg qid pos_id neg_id` (whitespace separated; a .parquet/.csv table with those columns
works too). Model teachers are scored lazily — only the pairs training actually visits — and every new score is
appended to the cache, so a second run (another seed, a resumed run, a MICE run from the same teacher) never runs
the teacher on a pair it has already scored. The cache file is keyed by the teacher's weights, its max length
and the dataset's fingerprint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from mice.errors import DataError, MiceError
from mice.train.samples import Group

FILE_COLUMNS = ["score_pos", "score_neg", "qid", "pos", "neg"]

# Hofstätter et al. 2020's ensemble-teacher scores on MS MARCO train triples (the paper's teacher), in the
# `score_pos score_neg qid pos neg` format. Not in ir_datasets: download it once (Zenodo record 4068216).
HOFSTATTER = "hofstatter-ensemble"
HOFSTATTER_FILE = "bert_cat_ensemble_msmarcopassage_train_scores_ids.tsv"
HOFSTATTER_URL = f"https://zenodo.org/record/4068216/files/{HOFSTATTER_FILE}"
HOFSTATTER_ENV = "MICE_HOFSTATTER_TRIPLES"


def hofstatter_path() -> Path:
    """Where the ensemble-teacher file is looked for: $MICE_HOFSTATTER_TRIPLES, else the mice cache."""
    import os

    from mice.data.base import cache_dir

    env = os.environ.get(HOFSTATTER_ENV)
    return Path(env).expanduser() if env else cache_dir() / "teachers" / HOFSTATTER_FILE


def teacher_file(spec: str | None) -> Path | None:
    """The score file a teacher spec names (a path, or `hofstatter-ensemble`), or None for a model teacher."""
    if not spec:
        return None
    if str(spec) == HOFSTATTER:
        path = hofstatter_path()
        if not path.is_file():
            raise DataError(
                f"teacher {HOFSTATTER}: {path} not found; download {HOFSTATTER_URL} there "
                f"(or set {HOFSTATTER_ENV}=PATH, or set teacher=FILE)"
            )
        return path
    path = Path(str(spec)).expanduser()
    return path if path.is_file() else None


def is_score_file(spec: str | None) -> bool:
    return teacher_file(spec) is not None


def read_score_file(path) -> pd.DataFrame:
    """Triples with teacher scores: DataFrame [score_pos, score_neg, qid, pos, neg]; errors name file and line."""
    path = Path(path)
    if path.suffix in (".parquet", ".csv"):
        from mice.files import read_table

        df = read_table(path)
        missing = [c for c in FILE_COLUMNS if c not in df.columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing} (need {FILE_COLUMNS})")
        df = df[FILE_COLUMNS].copy()
        for c in ("qid", "pos", "neg"):
            df[c] = df[c].astype(str)
        bad = ~np.isfinite(df["score_pos"].astype(float)) | ~np.isfinite(df["score_neg"].astype(float))
        if bad.any():
            raise DataError(f"{path}: row {int(np.flatnonzero(bad.to_numpy())[0]) + 1}: teacher score is not finite")
        return df.astype({"score_pos": float, "score_neg": float}).reset_index(drop=True)
    return read_triples(path, score_dtype=np.float64).frame()


def teacher_identity(spec: str) -> dict:
    """What identifies a teacher's scores: its spec, and for local folders their weight files (size, mtime)."""
    from mice.models.backbone import resolve_model_path
    from mice.data.base import file_fingerprint

    s = str(spec)
    if s.startswith("biencoder:"):
        from mice.models.backbone import packaged_model_path

        return {"spec": s, "path": str(packaged_model_path())}
    path = Path(resolve_model_path(s))
    if path.is_dir():
        weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
        return {"spec": str(path.resolve()), "weights": file_fingerprint(weights) if weights else ""}
    return {"spec": s}


def default_cache_path(spec: str, max_length: int | None, dataset) -> Path:
    from mice.data.base import cache_dir

    from mice.identity import identity_hash

    digest = identity_hash(
        {"teacher": teacher_identity(spec), "max_length": max_length, "dataset": dataset.fingerprint()}
    )[:20]
    return cache_dir() / "teacher" / f"{digest}.parquet"


class TeacherScores:
    """(query_id, doc_id) → teacher score, from a model (lazily, cached) or from a score file."""

    def __init__(
        self,
        spec: str | None,
        cache_path=None,
        max_length: int | None = None,
        batch_size: int = 64,
        device=None,
        scores: dict | None = None,
    ):
        self.spec = spec
        self.cache_path = Path(cache_path) if cache_path else None
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device
        self.table: dict[tuple[str, str], float] = dict(scores or {})
        self.new: dict[tuple[str, str], float] = {}
        self.n_scored = 0  # pairs this process sent through the teacher model
        self.n_cached = 0  # pairs found in the cache at start
        self._scorer = None
        if self.cache_path is not None and self.cache_path.exists():
            df = pd.read_parquet(self.cache_path)
            self.table.update(zip(zip(df["query_id"].astype(str), df["doc_id"].astype(str)), df["score"].astype(float)))
            self.n_cached = len(df)

    @classmethod
    def from_file(cls, path) -> tuple["TeacherScores", pd.DataFrame]:
        """Scores of a triples file, plus the triples (they also define the training groups). Each (query,
        document) pair keeps the score of its first occurrence (reading row by row, positive before negative)."""
        t = read_triples(path, score_dtype=np.float64)
        qid = np.repeat(t.qid, 2)
        doc = np.stack([t.pos, t.neg], axis=1).ravel()
        keep = first_occurrences(qid, doc)
        values = np.stack([t.score_pos, t.score_neg], axis=1).ravel()[keep]
        keys = zip(t.query_ids[qid[keep]].astype(str).tolist(), t.doc_ids[doc[keep]].astype(str).tolist())
        teacher = cls(None, scores=dict(zip(keys, values.tolist())))
        teacher.n_cached = len(teacher.table)
        return teacher, t.frame()

    @classmethod
    def for_triples(cls, dataset, path, seed: int):
        """`sampling: triples`: the sampler over the file's distinct triples the dataset can resolve, and a teacher
        whose scores are each triple's own (carried by the sampler's groups)."""
        from mice.train.samples import TripleSampler, known_triples

        queries: dict[str, str] = {}
        for split in dataset.splits:
            queries.update(dataset.queries(split))
        corpus = dataset.corpus()
        triples = known_triples(read_triples(path).unique(), queries, corpus)
        teacher = cls(None)
        teacher.n_cached = 2 * len(triples)
        return TripleSampler(triples, queries, corpus, seed), teacher

    @property
    def scorer(self):
        if self._scorer is None:
            if self.spec is None:
                raise MiceError("teacher scores come from a file, which lacks some pairs the run needs")
            import torch

            from mice.models.loader import load

            with torch.random.fork_rng(devices=[]):  # loading must not move the training RNG
                self._scorer = load(self.spec, device=self.device, max_length=self.max_length)
        return self._scorer

    def ensure(self, keys: Sequence[tuple[str, str]], texts: Sequence[tuple[str, str]]) -> None:
        """Score (with the teacher model) every key not known yet."""
        todo = {}
        for key, pair in zip(keys, texts):
            if key not in self.table and key not in todo:
                todo[key] = pair
        if not todo:
            return
        import torch

        with torch.no_grad():
            values = np.asarray(
                self.scorer.predict(list(todo.values()), batch_size=self.batch_size), dtype=np.float64
            ).reshape(-1)
        for key, v in zip(todo, values):
            self.table[key] = float(v)
            self.new[key] = float(v)
        self.n_scored += len(todo)

    def scores(self, groups: Iterable[Group]) -> np.ndarray:
        """[B, G] teacher scores of the groups' (query, document) pairs, scoring unknown pairs first."""
        groups = list(groups)
        if groups and all(g.teacher is not None for g in groups):  # the sampler read them with the triples
            return np.array([g.teacher for g in groups], dtype=np.float64)
        keys = [(g.query_id, d) for g in groups for d in g.doc_ids]
        texts = [(g.query, t) for g in groups for t in g.docs]
        self.ensure(keys, texts)
        return np.array([self.table[k] for k in keys], dtype=np.float64).reshape(len(groups), -1)

    def take_new(self) -> list[tuple[str, str, float]]:
        rows = [(q, d, s) for (q, d), s in self.new.items()]
        self.new = {}
        return rows

    def write(self, rows: list[tuple[str, str, float]]) -> None:
        """Append `rows` (from every process) to the cache file, atomically."""
        if self.cache_path is None or not rows:
            return
        from mice.files import write_table

        for q, d, s in rows:
            self.table[(q, d)] = s
        old = pd.read_parquet(self.cache_path) if self.cache_path.exists() else None
        fresh = pd.DataFrame(rows, columns=["query_id", "doc_id", "score"])
        df = fresh if old is None else pd.concat([old, fresh], ignore_index=True)
        df = df.drop_duplicates(["query_id", "doc_id"], keep="first").reset_index(drop=True)
        write_table(df, self.cache_path)


# ---------------------------------------------------------------------------------------- streamed triples
class TripleArrays:
    """A teacher file's triples as arrays (no Python object per line): scores (float32 unless asked otherwise) and
    int32 codes into the id vocabularies `query_ids` / `doc_ids` (numpy arrays of the ids as they appear in the
    file, first seen first). Built by `read_triples`."""

    def __init__(self, score_pos, score_neg, qid, pos, neg, query_ids, doc_ids, path=None):
        self.score_pos, self.score_neg = score_pos, score_neg
        self.qid, self.pos, self.neg = qid, pos, neg
        self.query_ids, self.doc_ids = query_ids, doc_ids
        self.path = path

    def __len__(self) -> int:
        return len(self.qid)

    def take(self, keep: np.ndarray) -> "TripleArrays":
        """The triples where the boolean mask `keep` is true (same vocabularies)."""
        return TripleArrays(
            self.score_pos[keep],
            self.score_neg[keep],
            self.qid[keep],
            self.pos[keep],
            self.neg[keep],
            self.query_ids,
            self.doc_ids,
            self.path,
        )

    def unique(self) -> "TripleArrays":
        """The triples without repeats of the same (qid, pos, neg) (the first kept, order preserved). Sort-based:
        one stable sort of the rows by (qid, pos, neg), then equal neighbours are repeats; besides the triples it
        holds an int64 row order and one int32 column at a time (~14 bytes per triple), never a hash table."""
        keep = first_occurrences(self.qid, self.pos, self.neg)
        return self if keep.all() else self.take(keep)

    def frame(self) -> pd.DataFrame:
        """The `read_score_file` DataFrame (ids as strings): for small files only."""
        return pd.DataFrame(
            {
                "score_pos": self.score_pos.astype(float),
                "score_neg": self.score_neg.astype(float),
                "qid": self.query_ids[self.qid].astype(str),
                "pos": self.doc_ids[self.pos].astype(str),
                "neg": self.doc_ids[self.neg].astype(str),
            }
        )


def first_occurrences(*keys: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows whose tuple of `keys` (equal-length integer arrays) has not occurred in an earlier
    row: a stable lexicographic sort, then each row equal to its sorted predecessor is a repeat."""
    n = len(keys[0])
    keep = np.ones(n, dtype=bool)
    if n < 2:
        return keep
    order = np.lexsort(keys[::-1])  # stable: among equal rows the earliest comes first
    same = np.ones(n - 1, dtype=bool)
    for k in keys:
        sorted_k = k[order]
        same &= sorted_k[1:] == sorted_k[:-1]
        del sorted_k
    keep[order[1:][same]] = False
    return keep


def _delimiter(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.readline()
    return "\t" if b"\t" in head else " "


def _read_columns(path: Path, sep: str, id_type, score_type, block_size: int) -> list[np.ndarray]:
    """The five columns as numpy arrays, read batch by batch: each batch's columns are kept (zero-copy) and joined
    column by column at the end, so the file never exists as a whole Arrow table besides the arrays."""
    import pyarrow as pa
    from pyarrow import csv as pacsv

    types = {"sp": score_type, "sn": score_type, "q": id_type, "p": id_type, "n": id_type}
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=list(types), block_size=block_size),
        parse_options=pacsv.ParseOptions(delimiter=sep, ignore_empty_lines=True),
        convert_options=pacsv.ConvertOptions(column_types=types),
        memory_pool=pa.system_memory_pool(),
    )  # freed blocks go back to the system
    parts: list[list[np.ndarray]] = [[] for _ in types]
    for batch in reader:
        for i, col in enumerate(batch.columns):
            if col.null_count:
                raise DataError(_bad_line(path, sep) or f"{path}: an empty field")
            parts[i].append(col.to_numpy(zero_copy_only=False))
        del batch
    columns = []
    for i, (name, t) in enumerate(types.items()):
        columns.append(np.concatenate(parts[i]) if parts[i] else np.zeros(0, dtype=t.to_pandas_dtype()))
        parts[i] = []  # this column's batches are freed as the next column is joined
    return columns


def _codes(values: np.ndarray, vocab: np.ndarray, chunk: int = 1 << 22) -> np.ndarray:
    """int32 positions of `values` in `vocab` (every value is in it), looked up a chunk at a time."""
    index = pd.Index(vocab)
    out = np.empty(len(values), dtype=np.int32)
    for start in range(0, len(values), chunk):
        out[start : start + chunk] = index.get_indexer(values[start : start + chunk])
    return out


def read_triples(path, block_size: int = 1 << 24, score_dtype=np.float32) -> TripleArrays:
    """Stream a `score_pos score_neg qid pos neg` file (tab- or space-separated, no header) into `TripleArrays`,
    block by block through pyarrow's CSV reader: memory grows with the arrays, ~20 bytes per triple (28 with
    float64 scores), not with Python objects. Numeric ids (MS MARCO's) are parsed as integers, others as strings;
    either way they become int32 codes into first-seen vocabularies (hashed look-ups of the distinct ids, a chunk
    at a time). A malformed line raises `DataError` naming the file and line."""
    import pyarrow as pa

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: teacher file not found")
    sep = _delimiter(path)
    score_type = pa.float64() if np.dtype(score_dtype) == np.float64 else pa.float32()
    for id_type in (pa.int32(), pa.int64(), pa.string()):
        try:
            sp, sn, q, p, n = _read_columns(path, sep, id_type, score_type, block_size)
            break
        except pa.ArrowInvalid as err:
            if id_type != pa.string() and ("conversion" in str(err).lower() or "range" in str(err).lower()):
                continue  # ids too large for int32, or not numeric: the next type
            raise DataError(_bad_line(path, sep) or f"{path}: {str(err).splitlines()[0]}") from None
    if not len(q):
        raise DataError(f"{path}: no teacher scores")
    finite = np.isfinite(sp) & np.isfinite(sn)
    if not finite.all():
        raise DataError(f"{path}:{_line_of_row(path, int(np.flatnonzero(~finite)[0]))}: teacher score is not finite")
    qvocab = pd.unique(q)  # in order of first appearance
    dvocab = pd.unique(np.concatenate([pd.unique(p), pd.unique(n)]))  # positives first, then negatives
    qcodes = _codes(q, qvocab)
    del q
    pos = _codes(p, dvocab)
    del p
    neg = _codes(n, dvocab)
    del n
    return TripleArrays(sp, sn, qcodes, pos, neg, np.asarray(qvocab), np.asarray(dvocab), path)


def _line_of_row(path: Path, row: int) -> int:
    """The line number of the `row`-th (0-based) non-empty line (the error path only: a plain scan)."""
    seen = -1
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                seen += 1
                if seen == row:
                    return lineno
    return row + 1


def _bad_line(path: Path, sep: str) -> str | None:
    """The first line that is not 'score score id id id' (the error path only: a plain scan)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            fields = line.rstrip("\r\n").split(sep) if sep == "\t" else line.split()
            if not line.strip():
                continue
            if len(fields) != 5:
                return f"{path}:{lineno}: expected 'score_pos score_neg qid pos neg', got {len(fields)} fields"
            try:
                float(fields[0]), float(fields[1])
            except ValueError:
                return f"{path}:{lineno}: the first two fields must be scores: {line.strip()[:80]!r}"
            if not all(f.strip() for f in fields[2:]):
                return f"{path}:{lineno}: an empty id field"
    return None
