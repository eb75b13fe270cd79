"""Dataset sources -> ``datasets.DatasetDict`` (train / validation / test: ``text`` [+ ``text_pair``] + ``label``).

Sources: the offline default (Rotten Tomatoes sentence-polarity snippets shipped inside the source
distribution of ``vadersentiment==3.3.2``, fetched with pip and sha256-checked), any Hugging Face hub
dataset, and local CSV / TSV / JSONL / Parquet files.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from . import packaged, tagging
from .config import DataConfig
from .errors import DataError

TEXT_CANDIDATES = ("text", "sentence", "review", "content", "document")
# Column pairs of sentence-pair tasks (GLUE MRPC/STS-B/RTE/WNLI, QQP, MNLI/SNLI, QNLI), first match wins.
PAIR_CANDIDATES = (
    ("sentence1", "sentence2"),
    ("question1", "question2"),
    ("premise", "hypothesis"),
    ("question", "sentence"),
)
LABEL_CANDIDATES = ("label", "labels", "sentiment", "target", "class")


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


def _text_columns(columns: list[str], cfg: DataConfig) -> tuple[str, str | None]:
    """The text column and, for sentence-pair tasks, the second text column."""
    if cfg.text_pair_column is not None:
        first = _pick_column(columns, cfg.text_column, TEXT_CANDIDATES, "text")
        return first, _pick_column(columns, cfg.text_pair_column, (), "text-pair")
    if cfg.text_column is None:
        for a, b in PAIR_CANDIDATES:
            if a in columns and b in columns:
                return a, b
    return _pick_column(columns, cfg.text_column, TEXT_CANDIDATES, "text"), None


def _texts(df: pd.DataFrame, text_col: str, pair_col: str | None) -> dict[str, np.ndarray]:
    out = {"text": df[text_col].astype(str).to_numpy()}
    if pair_col is not None:
        out["text_pair"] = df[pair_col].astype(str).to_numpy()
    return out


def is_regression(values: pd.Series, task: str) -> bool:
    """``task`` regression, or auto with numeric labels that are not all whole numbers."""
    if task != "auto":
        return task == "regression"
    numeric = pd.api.types.is_float_dtype(values)
    return bool(numeric and not np.all(np.mod(values.dropna().to_numpy(), 1) == 0))


def _encode_labels(values: pd.Series, task: str = "auto") -> tuple[np.ndarray, list[str] | None]:
    """Labels -> ids 0..K-1 with names (integer labels keep their order, strings are sorted), or, for
    regression, float32 values with names None."""
    if values.isna().any():
        raise DataError("the label column has empty values")
    if is_regression(values, task):
        try:
            return values.astype(np.float32).to_numpy(), None
        except (TypeError, ValueError):
            raise DataError("--task regression needs numeric labels") from None
    if pd.api.types.is_integer_dtype(values) or pd.api.types.is_bool_dtype(values):
        uniq = sorted(int(v) for v in values.unique())
        names = [str(u) for u in uniq]
        mapping = {u: i for i, u in enumerate(uniq)}
        return np.array([mapping[int(v)] for v in values], dtype=np.int64), names
    names = sorted(str(v) for v in values.unique())
    mapping = {n: i for i, n in enumerate(names)}
    return np.array([mapping[str(v)] for v in values], dtype=np.int64), names


def _frame_to_dataset(
    df: pd.DataFrame, text_col: str, label_col: str, pair_col: str | None = None, task: str = "auto"
) -> tuple[pd.DataFrame, list[str] | None]:
    labels, names = _encode_labels(df[label_col], task)
    out = pd.DataFrame({**_texts(df, text_col, pair_col), "label": labels})
    return out, names


def _features(names: list[str] | None, pair: bool = False, labelled: bool = True) -> Features:
    """Text column(s) and a class label, or a float32 label for regression (``names`` None), or no label."""
    texts = {"text": Value("string"), **({"text_pair": Value("string")} if pair else {})}
    if not labelled:
        return Features(texts)
    return Features({**texts, "label": Value("float32") if names is None else ClassLabel(names=names)})


def _strata(labels: np.ndarray, regression: bool) -> np.ndarray:
    """What a split is stratified on: the class, or for regression the label's quintile."""
    if not regression:
        return labels
    return np.digitize(labels, np.quantile(labels, [0.2, 0.4, 0.6, 0.8]))


def _split_frame(df: pd.DataFrame, names: list[str] | None, cfg: DataConfig) -> DatasetDict:
    """Train / validation / test, stratified by label; texts without a ``label`` column are split at random."""
    if len(df) < 3:
        raise DataError(f"the dataset has only {len(df)} usable rows; need at least a few per split")
    labelled = "label" in df.columns
    strata = _strata(df["label"].to_numpy(), names is None) if labelled else np.zeros(len(df), dtype=np.int64)
    tr, va, te = stratified_split(strata, (cfg.val_fraction, cfg.test_fraction), cfg.split_seed)
    feats = _features(names, "text_pair" in df.columns, labelled)
    return DatasetDict(
        {
            name: Dataset.from_pandas(df.iloc[idx].reset_index(drop=True), features=feats, preserve_index=False)
            for name, idx in (("train", tr), ("validation", va), ("test", te))
        }
    )


def read_local(path: Path) -> pd.DataFrame:
    """Read a CSV / TSV / JSONL / Parquet file into a DataFrame; a .txt file is one text per line (no labels)."""
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix == ".txt":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read {path}: {e}") from None
        return pd.DataFrame({"text": [line.strip() for line in lines if line.strip()]})
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
    raise DataError(
        f"unsupported file type {suffix!r} for {path}; use .csv, .tsv, .jsonl, .parquet (or .txt for texts)"
    )


def _load_hub(what: str, source: str, offline_hint: str, **kwargs):
    """``datasets.load_dataset(source, **kwargs)``; an unreachable hub or a bad name is one line (``what``: the flag)."""
    import datasets

    try:
        return datasets.load_dataset(source, **kwargs)
    except (ConnectionError, OSError, FileNotFoundError) as e:
        raise DataError(
            f"cannot load {what} {source!r}: not a local file and the Hugging Face hub cannot be reached "
            f"({type(e).__name__}); {offline_hint}"
        ) from None
    except ValueError as e:
        raise DataError(f"cannot load {what} {source!r}: {str(e).splitlines()[0]}") from None


def _from_hub(cfg: DataConfig) -> DatasetDict:
    raw = _load_hub(
        "dataset", cfg.dataset, "pass a .csv/.jsonl/.parquet file or use the offline default 'snippets'",
        name=cfg.dataset_config,
    )  # fmt: skip
    train_name = "train" if "train" in raw else next(iter(raw))
    cols = raw[train_name].column_names
    if tagging.is_tagging(cols, cfg.task):
        return _tagging_from_hub(raw, train_name, cfg)
    text_col, pair_col = _text_columns(cols, cfg)
    label_col = _pick_column(cols, cfg.label_column, LABEL_CANDIDATES, "label")
    feat = raw[train_name].features[label_col]
    frames = {k: v.to_pandas() for k, v in raw.items()}
    val_name = next((n for n in ("validation", "validation_matched", "valid", "dev") if n in frames), None)
    test_name = "test" if "test" in frames and (frames["test"][label_col] >= 0).all() else None  # GLUE: -1 = hidden
    if isinstance(feat, ClassLabel) and cfg.task != "regression":
        names = list(feat.names)
        conv = {
            k: pd.DataFrame({**_texts(f, text_col, pair_col), "label": f[label_col].astype(np.int64).to_numpy()})
            for k, f in frames.items()
        }
    else:
        all_labels = pd.concat([f[label_col] for f in frames.values()])
        _, names = _encode_labels(all_labels, cfg.task)
        mapping = {n: i for i, n in enumerate(names or [])}
        conv = {
            k: pd.DataFrame({
                **_texts(f, text_col, pair_col),
                "label": f[label_col].astype(np.float32).to_numpy() if names is None else [mapping[str(v)] for v in f[label_col]],
            })
            for k, f in frames.items()
        }  # fmt: skip
    train = conv[train_name]
    out: dict[str, pd.DataFrame] = {}
    if val_name and test_name:
        out = {"train": train, "validation": conv[val_name], "test": conv[test_name]}
    else:
        # carve what is missing out of train (a labelled validation set becomes the test set)
        held = conv[test_name] if test_name else conv[val_name] if val_name else None
        frac = (cfg.val_fraction, 0.0) if held is not None else (cfg.val_fraction, cfg.test_fraction)
        tr, va, te = stratified_split(_strata(train["label"].to_numpy(), names is None), frac, cfg.split_seed)
        out = {
            "train": train.iloc[tr],
            "validation": train.iloc[va],
            "test": held if held is not None else train.iloc[te],
        }
    feats = _features(names, pair_col is not None)
    return DatasetDict(
        {k: Dataset.from_pandas(v.reset_index(drop=True), features=feats, preserve_index=False) for k, v in out.items()}
    )


def _tagging_from_hub(raw, train_name: str, cfg: DataConfig) -> DatasetDict:
    """A CoNLL-style hub dataset (``tokens`` + ``ner_tags``): its own splits, validation carved out if missing."""
    tag_col = _pick_column(raw[train_name].column_names, cfg.label_column, tagging.TAG_CANDIDATES, "label")
    feature = raw[train_name].features[tag_col]
    inner = getattr(feature, "feature", None)
    frames = {k: v.to_pandas() for k, v in raw.items()}
    if isinstance(inner, ClassLabel):
        names = list(inner.names)
    else:
        names = tagging.tag_names([t for f in frames.values() for t in f[tag_col].tolist()])
    data = {k: tagging.to_dataset(f, tag_col, names) for k, f in frames.items()}
    val_name = next((n for n in ("validation", "valid", "dev") if n in data), None)
    if val_name and "test" in data:
        return DatasetDict({"train": data[train_name], "validation": data[val_name], "test": data["test"]})
    split = partial(stratified_split, fractions=(cfg.val_fraction, cfg.test_fraction), seed=cfg.split_seed)
    return tagging.split_dataset(data[train_name], split)


def load_source(cfg: DataConfig, *, log=print) -> DatasetDict:
    """The configured dataset as train / validation / test with ``text`` and ``label`` columns.

    ``a+b+...`` (when no such file exists) joins several sources split by split, then shuffles each split
    (seeded) so any prefix is still a random sample; the sources must share their labels and columns.
    """
    if "+" in cfg.dataset and not Path(cfg.dataset).expanduser().exists():
        return _limit(_join(cfg, log=log), cfg)
    if cfg.dataset in packaged.PACKAGED:
        df = packaged.read_rated(packaged.fetch(cfg.dataset, log=log))
        dsd = _split_frame(df, ["negative", "positive"], cfg)
    else:
        path = Path(cfg.dataset).expanduser()
        if path.suffix.lower() in (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".txt") or path.exists():
            if not path.is_file():
                raise DataError(f"data file {path} does not exist")
            raw = read_local(path)
            cols = [str(c) for c in raw.columns]
            if tagging.is_tagging(cols, cfg.task):
                tag_col = _pick_column(cols, cfg.label_column, tagging.TAG_CANDIDATES, "label")
                ds = tagging.to_dataset(raw, tag_col, tagging.tag_names(raw[tag_col].tolist()))
                split = partial(stratified_split, fractions=(cfg.val_fraction, cfg.test_fraction), seed=cfg.split_seed)
                return _limit(tagging.split_dataset(ds, split), cfg)
            text_col, pair_col = _text_columns(cols, cfg)
            if cfg.task == "embedding" and cfg.label_column is None and not set(cols) & set(LABEL_CANDIDATES):
                df, names = pd.DataFrame(_texts(raw, text_col, pair_col)), None  # texts alone: no probe
            else:
                if path.suffix.lower() == ".txt":
                    raise DataError(
                        f"{path} holds texts without labels: give a table with a label column for this task"
                    )
                label_col = _pick_column(cols, cfg.label_column, LABEL_CANDIDATES, "label")
                df, names = _frame_to_dataset(raw, text_col, label_col, pair_col, cfg.task)
            dsd = _split_frame(df, names, cfg)
        else:
            dsd = _from_hub(cfg)
    return _limit(dsd, cfg)


def _join(cfg: DataConfig, *, log=print) -> DatasetDict:
    import dataclasses

    from datasets import concatenate_datasets

    names = [n.strip() for n in cfg.dataset.split("+")]
    if not all(names):
        raise DataError(f"--dataset {cfg.dataset!r} has an empty part; join sources as a+b+c")
    whole = dataclasses.replace(cfg, max_train_examples=None, max_eval_examples=None)
    parts = [load_source(dataclasses.replace(whole, dataset=n), log=log) for n in names]
    for name, part in zip(names[1:], parts[1:], strict=True):
        if part["train"].features != parts[0]["train"].features:
            raise DataError(
                f"--dataset {cfg.dataset}: {name} does not have the labels and columns of {names[0]} "
                f"({dict(part['train'].features)} vs {dict(parts[0]['train'].features)}); join like with like"
            )
    return DatasetDict(
        {
            split: concatenate_datasets([p[split] for p in parts]).shuffle(seed=cfg.split_seed).flatten_indices()
            for split in parts[0]
        }
    )


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


STS_SCORE_CANDIDATES = ("score", "similarity_score", "relatedness_score", "similarity", "label")


def read_sts(source: str, split: str = "test") -> tuple[list[str], list[str], list[float]]:
    """A semantic-similarity set: ``(first texts, second texts, gold scores)``.

    ``source``: a .csv/.tsv/.jsonl/.parquet file or a hub dataset id (its ``split``), with two sentence
    columns (sentence1/sentence2, question1/question2, ...) and a numeric score (score, label, ...). Rows
    without a score (GLUE's hidden test labels are -1) are refused rather than scored.
    """
    path = Path(source).expanduser()
    if path.suffix.lower() in (".csv", ".tsv", ".jsonl", ".json", ".parquet") or path.exists():
        if not path.is_file():
            raise DataError(f"--eval-dataset file {path} does not exist")
        df = read_local(path)
    else:
        hint = "pass a .csv/.tsv/.jsonl file with sentence1, sentence2 and score columns"
        df = _load_hub("--eval-dataset", source, hint, split=split).to_pandas()
    cols = [str(c) for c in df.columns]
    pair = next(((a, b) for a, b in PAIR_CANDIDATES if a in cols and b in cols), None)
    if pair is None:
        raise DataError(
            f"--eval-dataset {source} has no pair of sentence columns (looked for "
            f"{', '.join('/'.join(p) for p in PAIR_CANDIDATES)}); columns are: {', '.join(cols)}"
        )
    score_col = _pick_column(cols, None, STS_SCORE_CANDIDATES, "score")
    scores = pd.to_numeric(df[score_col], errors="coerce")
    if len(df) < 2 or scores.isna().any() or (score_col == "label" and (scores < 0).any()):
        raise DataError(
            f"--eval-dataset {source}: the {score_col!r} column needs a numeric score on every row (at least 2 rows; "
            "GLUE hides its test scores: use the validation split)"
        )
    return df[pair[0]].astype(str).tolist(), df[pair[1]].astype(str).tolist(), scores.astype(float).tolist()


def read_texts(
    source: str, *, text_column: str | None = None, text_pair_column: str | None = None, stdin=None
) -> list[str] | list[tuple[str, str]]:
    """Texts to predict on: ``-`` (standard input) or a .txt file, one per line; or a table's text column.

    With ``text_pair_column`` (tables only) each item is a ``(text, text_pair)`` sentence pair.
    """
    import sys

    if text_pair_column is not None and (source == "-" or source.endswith(".txt")):
        raise DataError("--text-pair-column needs a table (.csv/.tsv/.jsonl/.parquet) with both text columns")
    if source == "-" or source.endswith(".txt"):
        try:
            raw = (stdin or sys.stdin).read() if source == "-" else Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read {source}: {e}") from None
        texts = [line.strip() for line in raw.splitlines() if line.strip()]
    else:
        path = Path(source)
        if not path.is_file():
            raise DataError(f"input file {path} does not exist")
        df = read_local(path)
        cols = [str(c) for c in df.columns]
        texts = df[_pick_column(cols, text_column, TEXT_CANDIDATES, "text")].astype(str).tolist()
        if text_pair_column is not None:
            pairs = df[_pick_column(cols, text_pair_column, (), "text-pair")].astype(str).tolist()
            texts = list(zip(texts, pairs, strict=True))
    if not texts:
        raise DataError(f"no texts in {'standard input' if source == '-' else source}; give one text per line")
    return texts
