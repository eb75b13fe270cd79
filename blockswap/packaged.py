"""Text sets that ship inside PyPI packages: fetched with pip, sha256-checked, cached.

The offline default, the Rotten Tomatoes sentence-polarity snippets, is inside the *source*
distribution of ``vadersentiment==3.3.2`` (``additional_resources/hutto_ICWSM_2014.tar.gz``).
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd

from .errors import DataError
from .files import write_bytes

SNIPPETS_SDIST = "vaderSentiment-3.3.2.tar.gz"
SNIPPETS_SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
SNIPPETS_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
SNIPPETS_SHA256 = "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350"
SNIPPETS_FILE = "movieReviewSnippets_GroundTruth.txt"


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
    write_bytes(out, data)  # atomic: a half-written file is never taken for the dataset


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
