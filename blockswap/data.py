"""Dataset sources -> ``datasets.DatasetDict`` (train / validation / test, ``text`` + ``label``) -> loaders.

Sources: the offline default (Rotten Tomatoes sentence-polarity snippets shipped inside the source
distribution of ``vadersentiment==3.3.2``, fetched with pip and sha256-checked), any Hugging Face hub
dataset, and local CSV / TSV / JSONL / Parquet files.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from torch.utils.data import DataLoader

from .config import DataConfig


class DataError(ValueError):
    """Data a user pointed at cannot be used; the message says why and what to do."""


SNIPPETS_SDIST = "vaderSentiment-3.3.2.tar.gz"
SNIPPETS_SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
SNIPPETS_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
SNIPPETS_SHA256 = "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350"
SNIPPETS_FILE = "movieReviewSnippets_GroundTruth.txt"
TEXT_CANDIDATES = ("text", "sentence", "review", "content", "document")
LABEL_CANDIDATES = ("label", "labels", "sentiment", "target", "class")


def cache_dir() -> Path:
    """``$BLOCKSWAP_CACHE``, else the user cache folder."""
    env = os.environ.get("BLOCKSWAP_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("blockswap"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_sdist(target: Path) -> Path:
    """``pip download --no-deps --no-binary :all: vadersentiment==3.3.2`` into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet"]
    cmd += ["--disable-pip-version-check", "-d", str(target), "vadersentiment==3.3.2"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sdist = target / SNIPPETS_SDIST
    if proc.returncode != 0 or not sdist.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(
            f"could not download vadersentiment==3.3.2 from the package registry ({last}); check pip's index"
        )
    return sdist


def _extract_snippets(sdist: Path, out: Path) -> None:
    with tarfile.open(sdist) as outer:
        inner_name = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
        inner_bytes = outer.extractfile(inner_name).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        data = inner.extractfile(SNIPPETS_MEMBER).read()
    if hashlib.sha256(data).hexdigest() != SNIPPETS_SHA256:
        raise DataError(f"{SNIPPETS_MEMBER} inside {sdist} has an unexpected checksum; delete {sdist} and re-run")
    fd, tmp = tempfile.mkstemp(dir=out.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)  # atomic: a half-written file is never taken for the dataset


def fetch_snippets(*, force: bool = False, log=print) -> Path:
    """The snippets file in the cache, fetched through pip and verified by sha256 on first use."""
    folder = cache_dir() / "snippets"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / SNIPPETS_FILE
    if out.is_file() and not force:
        if _sha256(out) == SNIPPETS_SHA256:
            return out
        raise DataError(f"cached {out} fails its sha256 check; run `blockswap fetch --force` to re-fetch it")
    sdist = folder / SNIPPETS_SDIST
    if force or not sdist.is_file() or _sha256(sdist) != SNIPPETS_SDIST_SHA256:
        log(f"fetching the snippets: pip download vadersentiment==3.3.2 (source distribution) into {folder}")
        sdist.unlink(missing_ok=True)
        sdist = _download_sdist(folder)
        if _sha256(sdist) != SNIPPETS_SDIST_SHA256:
            raise DataError(f"downloaded {sdist} fails its sha256 check; the registry served a different file")
    _extract_snippets(sdist, out)
    return out


def read_snippets(path: Path) -> pd.DataFrame:
    """Tab-separated id, rating, text -> ``text``, ``label`` (1 = positive rating, 0 = negative; 0 dropped)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t", 2)
        if len(parts) == 3 and parts[2].strip():
            rating = float(parts[1])
            if rating != 0:
                rows.append((parts[2].strip(), int(rating > 0)))
    return pd.DataFrame(rows, columns=["text", "label"])


def stratified_split(labels: np.ndarray, fractions: tuple[float, float], seed: int) -> tuple[np.ndarray, ...]:
    """Indices of (train, validation, test): each class is shuffled with ``seed`` and cut by ``fractions``.

    Uses numpy's PCG64 generator, so the split is identical on every machine.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    parts: list[list[int]] = [[], [], []]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_val, n_test = round(len(idx) * fractions[0]), round(len(idx) * fractions[1])
        parts[1] += idx[:n_val].tolist()
        parts[2] += idx[n_val : n_val + n_test].tolist()
        parts[0] += idx[n_val + n_test :].tolist()
    # one more seeded shuffle mixes the classes, so any prefix of a split is a random sample of it
    return tuple(np.array(p, dtype=np.int64)[rng.permutation(len(p))] for p in parts)


def _pick_column(columns: list[str], given: str | None, candidates: tuple[str, ...], what: str) -> str:
    if given is not None:
        if given not in columns:
            raise DataError(f"{what} column {given!r} not found; columns are: {', '.join(columns)}")
        return given
    for c in candidates:
        if c in columns:
            return c
    raise DataError(
        f"no {what} column found (looked for {', '.join(candidates)}); columns are: {', '.join(columns)}; pass --{what}-column"
    )


def _encode_labels(values: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Labels -> ids 0..K-1 with names; integer labels keep their order, strings are sorted."""
    if values.isna().any():
        raise DataError("the label column has empty values")
    if pd.api.types.is_integer_dtype(values) or pd.api.types.is_bool_dtype(values):
        uniq = sorted(int(v) for v in values.unique())
        names = [str(u) for u in uniq]
        mapping = {u: i for i, u in enumerate(uniq)}
        return np.array([mapping[int(v)] for v in values], dtype=np.int64), names
    names = sorted(str(v) for v in values.unique())
    mapping = {n: i for i, n in enumerate(names)}
    return np.array([mapping[str(v)] for v in values], dtype=np.int64), names


def _frame_to_dataset(df: pd.DataFrame, text_col: str, label_col: str) -> tuple[pd.DataFrame, list[str]]:
    labels, names = _encode_labels(df[label_col])
    out = pd.DataFrame({"text": df[text_col].astype(str).to_numpy(), "label": labels})
    return out, names


def _features(names: list[str]) -> Features:
    return Features({"text": Value("string"), "label": ClassLabel(names=names)})


def _split_frame(df: pd.DataFrame, names: list[str], cfg: DataConfig) -> DatasetDict:
    if len(df) < 3:
        raise DataError(f"the dataset has only {len(df)} usable rows; need at least a few per split")
    tr, va, te = stratified_split(df["label"].to_numpy(), (cfg.val_fraction, cfg.test_fraction), cfg.split_seed)
    feats = _features(names)
    return DatasetDict(
        {
            name: Dataset.from_pandas(df.iloc[idx].reset_index(drop=True), features=feats, preserve_index=False)
            for name, idx in (("train", tr), ("validation", va), ("test", te))
        }
    )


def read_local(path: Path) -> pd.DataFrame:
    """Read a CSV / TSV / JSONL / Parquet file into a DataFrame."""
    suffix = "".join(path.suffixes[-1:]).lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix == ".tsv":
            return pd.read_csv(path, sep="\t")
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=suffix == ".jsonl")
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except Exception as e:  # pandas raises many types; the user needs one line
        raise DataError(f"cannot parse {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    raise DataError(f"unsupported file type {suffix!r} for {path}; use .csv, .tsv, .jsonl or .parquet")


def _from_hub(cfg: DataConfig) -> DatasetDict:
    import datasets

    try:
        raw = datasets.load_dataset(cfg.dataset, cfg.dataset_config)
    except (ConnectionError, OSError, FileNotFoundError) as e:
        raise DataError(
            f"cannot load dataset {cfg.dataset!r}: not a local file and the Hugging Face hub cannot be reached "
            f"({type(e).__name__}); pass a .csv/.jsonl/.parquet file or use the offline default 'snippets'"
        ) from None
    except ValueError as e:
        raise DataError(f"cannot load dataset {cfg.dataset!r}: {str(e).splitlines()[0]}") from None
    train_name = "train" if "train" in raw else next(iter(raw))
    cols = raw[train_name].column_names
    text_col = _pick_column(cols, cfg.text_column, TEXT_CANDIDATES, "text")
    label_col = _pick_column(cols, cfg.label_column, LABEL_CANDIDATES, "label")
    feat = raw[train_name].features[label_col]
    frames = {k: v.to_pandas() for k, v in raw.items()}
    val_name = next((n for n in ("validation", "valid", "dev") if n in frames), None)
    test_name = "test" if "test" in frames and (frames["test"][label_col] >= 0).all() else None
    if isinstance(feat, ClassLabel):
        names = list(feat.names)
        conv = {
            k: pd.DataFrame({"text": f[text_col].astype(str), "label": f[label_col].astype(np.int64)})
            for k, f in frames.items()
        }
    else:
        all_labels = pd.concat([f[label_col] for f in frames.values()])
        _, names = _encode_labels(all_labels)
        mapping = {n: i for i, n in enumerate(names)}
        conv = {
            k: pd.DataFrame({"text": f[text_col].astype(str), "label": [mapping[str(v)] for v in f[label_col]]})
            for k, f in frames.items()
        }
    train = conv[train_name]
    out: dict[str, pd.DataFrame] = {}
    if val_name and test_name:
        out = {"train": train, "validation": conv[val_name], "test": conv[test_name]}
    else:
        # carve what is missing out of train (a labelled validation set becomes the test set)
        held = conv[test_name] if test_name else conv[val_name] if val_name else None
        frac = (cfg.val_fraction, 0.0) if held is not None else (cfg.val_fraction, cfg.test_fraction)
        tr, va, te = stratified_split(train["label"].to_numpy(), frac, cfg.split_seed)
        out = {
            "train": train.iloc[tr],
            "validation": train.iloc[va],
            "test": held if held is not None else train.iloc[te],
        }
    feats = _features(names)
    return DatasetDict(
        {k: Dataset.from_pandas(v.reset_index(drop=True), features=feats, preserve_index=False) for k, v in out.items()}
    )


def load_source(cfg: DataConfig, *, log=print) -> DatasetDict:
    """The configured dataset as train / validation / test with ``text`` and ``label`` columns."""
    if cfg.dataset == "snippets":
        df = read_snippets(fetch_snippets(log=log))
        dsd = _split_frame(df, ["negative", "positive"], cfg)
    else:
        path = Path(cfg.dataset).expanduser()
        if path.suffix.lower() in (".csv", ".tsv", ".jsonl", ".json", ".parquet") or path.exists():
            if not path.is_file():
                raise DataError(f"data file {path} does not exist")
            raw = read_local(path)
            cols = [str(c) for c in raw.columns]
            text_col = _pick_column(cols, cfg.text_column, TEXT_CANDIDATES, "text")
            label_col = _pick_column(cols, cfg.label_column, LABEL_CANDIDATES, "label")
            df, names = _frame_to_dataset(raw, text_col, label_col)
            dsd = _split_frame(df, names, cfg)
        else:
            dsd = _from_hub(cfg)
    return _limit(dsd, cfg)


def _limit(dsd: DatasetDict, cfg: DataConfig) -> DatasetDict:
    out = {}
    for name, ds in dsd.items():
        cap = cfg.max_train_examples if name == "train" else cfg.max_eval_examples
        if cap is not None and len(ds) > cap:
            ds = ds.select(range(cap))  # splits are shuffled, so a prefix is a random sample
        if len(ds) == 0:
            raise DataError(f"the {name} split is empty; use more data or larger split fractions")
        out[name] = ds
    return DatasetDict(out)


def label_names(dsd: DatasetDict) -> list[str]:
    return list(dsd["train"].features["label"].names)


def tokenize(dsd: DatasetDict, tokenizer, max_length: int) -> DatasetDict:
    """Add ``input_ids`` / ``attention_mask`` (/ ``token_type_ids``), rename ``label`` -> ``labels``."""

    def enc(batch):
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    out = dsd.map(enc, batched=True, remove_columns=["text"], desc="tokenising")
    return out.rename_column("label", "labels")


def collate(tokenizer):
    """Dynamic padding to the longest sample of each batch."""

    def fn(rows: list[dict]) -> dict[str, torch.Tensor]:
        labels = torch.tensor([r["labels"] for r in rows], dtype=torch.long)
        feats = [{k: v for k, v in r.items() if k != "labels"} for r in rows]
        batch = tokenizer.pad(feats, return_tensors="pt")
        batch = {k: v for k, v in batch.items()}
        batch["labels"] = labels
        return batch

    return fn


class BucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Shuffled batches of similar length: less padding, same examples per epoch.

    Each epoch shuffles all indices (seeded), sorts windows of ``batch_size * window`` by length,
    cuts them into batches and shuffles the batch order.
    """

    def __init__(self, lengths: list[int], batch_size: int, *, seed: int = 0, window: int = 50) -> None:
        self.lengths, self.batch_size, self.seed, self.window = list(lengths), batch_size, seed, window
        self.epoch = 0

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=lambda i: self.lengths[i])
            batches += [chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        for k in torch.randperm(len(batches), generator=g).tolist():
            yield batches[k]

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


def loader(ds: Dataset, tokenizer, *, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """A DataLoader with dynamic padding; training batches are length-bucketed, evaluation is sorted by length."""
    lengths = [len(x) for x in ds["input_ids"]]
    if shuffle:
        sampler = BucketBatchSampler(lengths, batch_size, seed=seed)
        return DataLoader(ds.with_format(None), batch_sampler=sampler, collate_fn=collate(tokenizer))
    ds = ds.select(np.argsort(np.array(lengths), kind="stable").tolist())
    return DataLoader(ds.with_format(None), batch_size=batch_size, shuffle=False, collate_fn=collate(tokenizer))
