"""The offline default collection, built from the docstrings of installed packages.

Query = a public function's, class's or method's summary line; its one relevant document = the rest of that
docstring's description (summary removed, numpydoc/Google sections, doctests and directives dropped). Pairs
are deduplicated (by query text and by document text), capped per package by a stable hash, and split
train/dev/test by a stable hash of their id (the public qualified name, e.g. `numpy.linalg.norm`), so the same
installed packages always give the same collection.

Each package is harvested in a fresh interpreter (see `_docstrings.py`): importing every public submodule has
side effects that must not leak into the caller, and a broken submodule only costs one skipped module. The
result is cached in `cache_dir()/embedded/` and keyed by the package versions and the extractor's source.

Specs: `embedded:docs` (numpy, pandas, scipy, matplotlib, torch), `embedded:docs-ood` (sympy, networkx), and
either with options, e.g. `embedded:docs?packages=json,logging&max_per_package=200`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qsl

import pandas as pd

from mice.errors import DataError
from mice.files import write_json_atomic, write_table
from mice.data.base import TableDataset, cache_dir, warn

BUILDER_VERSION = 1
IN_DOMAIN = ("numpy", "pandas", "scipy", "matplotlib", "torch")
OUT_OF_DOMAIN = ("sympy", "networkx")
SPLITS = ("train", "dev", "test")
_EXTRACTOR = Path(__file__).with_name("_docstrings.py")


@dataclass(frozen=True)
class EmbeddedConfig:
    """What to harvest and how to split it. `fractions` are the train/dev/test shares of the hash space."""

    name: str = "docs"
    packages: tuple[str, ...] = IN_DOMAIN
    max_per_package: int = 1500
    max_depth: int = 3
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    timeout_s: float = 600.0
    workers: int = field(default=0, compare=False)  # 0 = one per CPU core

    def key(self, versions: dict[str, str]) -> str:
        payload = {
            "builder": BUILDER_VERSION,
            "extractor": hashlib.sha1(_EXTRACTOR.read_bytes()).hexdigest(),
            "packages": list(self.packages),
            "versions": versions,
            "max_per_package": self.max_per_package,
            "max_depth": self.max_depth,
            "fractions": list(self.fractions),
        }
        return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def parse_fractions(value: str) -> tuple[float, float, float]:
    """`0.8,0.1,0.1` -> the train/dev/test shares; ValueError unless three non-negative shares summing to 1."""
    fr = tuple(float(x) for x in value.split(","))
    if len(fr) != 3 or abs(sum(fr) - 1) > 1e-6 or min(fr) < 0:
        raise ValueError("three non-negative shares summing to 1")
    return fr


def parse_spec(spec: str) -> EmbeddedConfig:
    """`embedded:docs[?packages=a,b&max_per_package=N&max_depth=N&fractions=0.8,0.1,0.1]`."""
    body = spec.split(":", 1)[1] if ":" in spec else "docs"
    name, _, query = body.partition("?")
    name = name or "docs"
    if name == "docs":
        cfg = EmbeddedConfig()
    elif name == "docs-ood":
        cfg = EmbeddedConfig(name="docs-ood", packages=OUT_OF_DOMAIN)
    else:
        raise DataError(f"{spec}: unknown embedded collection {name!r} (docs, docs-ood, meta, debian)")
    changes = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        try:
            if key == "packages":
                changes["packages"] = tuple(p.strip() for p in value.split(",") if p.strip())
            elif key in ("max_per_package", "max_depth", "workers"):
                changes[key] = int(value)
            elif key == "fractions":
                changes[key] = parse_fractions(value)
            else:
                raise DataError(f"{spec}: unknown option {key!r} (packages, max_per_package, max_depth, fractions)")
        except ValueError as err:
            raise DataError(f"{spec}: bad value for {key!r}: {value!r} ({err})") from None
    if not changes.get("packages", cfg.packages):
        raise DataError(f"{spec}: no packages")
    return replace(cfg, **changes)


def _version(package: str) -> str:
    if importlib.util.find_spec(package) is None:
        raise DataError(f"embedded corpus: package {package!r} is not installed")
    if package in getattr(sys, "stdlib_module_names", ()):
        return f"python-{sys.version.split()[0]}"
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        dists = importlib.metadata.packages_distributions().get(package, [])
        for dist in dists:
            try:
                return f"{dist}-{importlib.metadata.version(dist)}"
            except importlib.metadata.PackageNotFoundError:
                continue
    spec = importlib.util.find_spec(package)
    origin = spec.origin or ""
    return f"mtime-{os.stat(origin).st_mtime_ns}" if origin and os.path.exists(origin) else "unknown"


def _harvest(package: str, cfg: EmbeddedConfig) -> dict:
    """Run the extractor for one package in a fresh interpreter; returns its JSON result or {'error': ...}."""
    with tempfile.TemporaryDirectory(prefix="mice-docs-") as tmp:
        out = Path(tmp) / "out.json"
        env = dict(
            os.environ, MPLBACKEND="Agg", PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false", PYTHONHASHSEED="0"
        )
        code = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
        try:
            proc = subprocess.run(
                [sys.executable, "-c", code, str(_EXTRACTOR), package, str(out), str(cfg.max_depth)],
                cwd=tmp,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=cfg.timeout_s,
            )
        except subprocess.TimeoutExpired:
            return {"package": package, "error": f"timed out after {cfg.timeout_s:.0f} s"}
        if proc.returncode != 0 or not out.exists():
            tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            return {"package": package, "error": tail[-1] if tail else f"exit code {proc.returncode}"}
        return json.loads(out.read_text(encoding="utf-8"))


def _stable_unit(text: str, salt: str) -> float:
    return int(hashlib.sha1(f"{salt}:{text}".encode()).hexdigest()[:12], 16) / 16**12


def first_pair(query: str, doc: str, seen_q: set, seen_d: set, stats: dict) -> bool:
    """True, and remembered, for a (normalised) query and document text neither seen before; a repeat is counted
    in `stats` (`duplicate_queries` first, then `duplicate_docs`) and dropped."""
    if query in seen_q:
        stats["duplicate_queries"] += 1
        return False
    if doc in seen_d:
        stats["duplicate_docs"] += 1
        return False
    seen_q.add(query)
    seen_d.add(doc)
    return True


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def assemble(results: list[dict], cfg: EmbeddedConfig) -> tuple[pd.DataFrame, dict]:
    """Deduplicate, cap per package and split harvested records (pure and deterministic)."""
    stats = {"packages": {}, "duplicate_queries": 0, "duplicate_docs": 0}
    records = []
    for res in results:
        pkg = res["package"]
        if "error" in res:
            stats["packages"][pkg] = {"error": res["error"]}
            continue
        stats["packages"][pkg] = {
            "version": res.get("version"),
            "modules_imported": res["modules_imported"],
            "modules_failed": len(res["modules_failed"]),
            "failed_examples": res["modules_failed"][:10],
            "objects": res["objects"],
            "harvested": len(res["records"]),
        }
        records.extend(res["records"])
    # shortest public path first: it names the object where users meet it
    records.sort(key=lambda r: (r["id"].count("."), len(r["id"]), r["id"]))
    seen_q, seen_d, ids, kept = set(), set(), set(), []
    for r in records:
        q, d = _norm(r["query"]), _norm(r["doc"])
        if r["id"] in ids:
            continue
        if not first_pair(q, d, seen_q, seen_d, stats):
            continue
        ids.add(r["id"])
        kept.append(r)
    df = pd.DataFrame(kept, columns=["id", "package", "kind", "query", "doc"])
    if len(df):
        df["_order"] = [_stable_unit(i, "cap") for i in df["id"]]
        df = df.sort_values(["package", "_order"]).groupby("package", sort=True).head(cfg.max_per_package)
        train, dev, _ = cfg.fractions
        unit = [_stable_unit(i, "split") for i in df["id"]]
        df["split"] = ["train" if u < train else "dev" if u < train + dev else "test" for u in unit]
        df = df.drop(columns="_order").sort_values("id").reset_index(drop=True)
    else:
        df["split"] = []
    for pkg, info in stats["packages"].items():
        if "error" not in info:
            info["kept"] = int((df["package"] == pkg).sum())
    stats["pairs"] = len(df)
    stats["splits"] = {s: int((df["split"] == s).sum()) for s in SPLITS}
    return df, stats


def build(cfg: EmbeddedConfig, use_cache: bool = True) -> tuple[pd.DataFrame, dict]:
    """The collection's table [id, package, kind, query, doc, split] and build statistics (cached on disk)."""
    versions = {p: _version(p) for p in cfg.packages}
    key = cfg.key(versions)
    folder = cache_dir() / "embedded"
    table, meta = folder / f"{cfg.name}-{key[:16]}.parquet", folder / f"{cfg.name}-{key[:16]}.json"
    if use_cache and table.exists() and meta.exists():
        return pd.read_parquet(table), json.loads(meta.read_text(encoding="utf-8"))
    workers = cfg.workers or min(len(cfg.packages), os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(lambda p: _harvest(p, cfg), cfg.packages))
    failed = {r["package"]: r["error"] for r in results if "error" in r}
    if len(failed) == len(results):
        raise DataError(
            "embedded corpus: every package failed to import: " + "; ".join(f"{p}: {e}" for p, e in failed.items())
        )
    df, stats = assemble(results, cfg)
    stats.update(config={**asdict(cfg), "packages": list(cfg.packages)}, versions=versions, key=key)
    skipped = sum(info.get("modules_failed", 0) for info in stats["packages"].values())
    if skipped:
        warn(
            f"embedded:{cfg.name}: {skipped} submodules could not be imported and were skipped "
            "(see `mice data info` for the list)"
        )
    if failed:
        warn(
            f"embedded:{cfg.name}: package(s) skipped, not cached: " + "; ".join(f"{p}: {e}" for p, e in failed.items())
        )
    elif use_cache:
        write_json_atomic(meta, stats)
        write_table(df, table)
    return df, stats


class EmbeddedDataset(TableDataset):
    """Docstring pairs as a dataset: one relevant document (its own description) per query."""

    def __init__(self, cfg: EmbeddedConfig | None = None, spec: str | None = None, use_cache: bool = True) -> None:
        super().__init__()
        self.config = cfg or EmbeddedConfig()
        self.name = spec or f"embedded:{self.config.name}"
        self._use_cache = use_cache
        self._table = None
        self.build_stats = {}

    def _build(self) -> tuple[pd.DataFrame, dict]:
        return build(self.config, self._use_cache)

    def fingerprint(self) -> str:
        self.table
        return "embedded-" + self.build_stats.get("key", "nocache") + "-" + str(len(self.table))
