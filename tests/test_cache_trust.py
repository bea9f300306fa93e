"""The cache is trusted only for what was verified: raw releases and parsed tables carry a marker,
written last, that records what was checked; a cache without it, or that no longer matches it, is built
again, and a good mirror repairs what a bad one or an older version left."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from recmodels.datasets import MARKER, RELEASES, fetch_release
from recmodels.errors import ChecksumMismatch, MalformedRatings
from tasks.data import build_interactions, interactions_marker_path, interactions_path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_release(mirror: Path, folder: str, dest: Path) -> Path:
    """A writable copy of a release folder of the shared mirror under ``dest``."""
    shutil.copytree(mirror / folder, dest / folder, copy_function=shutil.copyfile)
    return dest / folder


def test_raw_folder_without_marker_is_fetched_again(tmp_path: Path, mirror: Path) -> None:
    home = tmp_path / "home"
    poisoned = home / "raw" / "100k"
    poisoned.mkdir(parents=True)
    (poisoned / "u.data").write_text("1\t2\t1e30\t-5\n")  # what an older version would have kept
    folder = fetch_release("100k", home, mirror)
    assert sha256(folder / "u.data") == RELEASES["100k"].ratings_sha256
    marker = json.loads((folder / MARKER).read_text())
    assert marker["ratings_sha256"] == RELEASES["100k"].ratings_sha256
    assert marker["ratings_rows"] == 100_000 and marker["source"] == str(mirror / "ml-100k" / "u.data")
    assert set(marker["checks"]) == {"format", "line end", "rating count", "ratings sha256"}


def test_raw_file_edited_after_verification_is_fetched_again(tmp_path: Path, mirror: Path) -> None:
    home = tmp_path / "home"
    folder = fetch_release("latest-small", home, mirror)
    ratings = folder / "ratings.csv"
    ratings.write_bytes(ratings.read_bytes()[:-30])  # truncated behind the marker's back
    assert fetch_release("latest-small", home, mirror) == folder
    assert sha256(ratings) == RELEASES["latest-small"].ratings_sha256


def test_100k_rewritten_as_1m_is_refused(tmp_path: Path, mirror: Path) -> None:
    fake = tmp_path / "mirror" / "ml-1m"
    fake.mkdir(parents=True)
    text = (mirror / "ml-100k" / "u.data").read_text()
    (fake / "ratings.dat").write_text(text.replace("\t", "::"))
    home = tmp_path / "home"
    with pytest.raises(MalformedRatings, match=r"has 100,000 ratings but MovieLens 1m has 1,000,209"):
        fetch_release("1m", home, tmp_path / "mirror")
    assert not (home / "raw" / "1m").exists()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1\t10\t5\t978300760\n", r"line 1: .* is not 'user::item::rating::timestamp'"),  # wrong delimiter
        ("1::10::5::978300760\n1::20::3::97830", "does not end with a line end: it is truncated"),
        ("", "has no ratings"),
    ],
)
def test_folder_mirror_without_sums_is_checked_strictly(tmp_path: Path, text: str, problem: str) -> None:
    fake = tmp_path / "mirror" / "ml-10M100K"
    fake.mkdir(parents=True)
    (fake / "ratings.dat").write_text(text)
    with pytest.raises(MalformedRatings, match=problem):
        fetch_release("10m", tmp_path / "home", tmp_path / "mirror")
    assert not (tmp_path / "home" / "raw" / "10m").exists()


def test_zip_in_a_folder_mirror_is_checksummed_first(tmp_path: Path, mirror: Path) -> None:
    root = tmp_path / "mirror"
    copy_release(mirror, "ml-100k", root)
    (root / "ml-100k.zip").write_bytes(b"PK not GroupLens' zip")
    with pytest.raises(ChecksumMismatch, match=r"ml-100k\.zip .* expects 50d2a98"):
        fetch_release("100k", tmp_path / "home", root)


def test_good_mirror_after_a_bad_one_repairs_the_cache(tmp_path: Path, mirror: Path) -> None:
    """``latest`` has no published sum or count: bad values pass the fetch, fail the parse, and the
    raw copy is discarded then, so the next run with a good mirror fetches again."""
    bad = tmp_path / "bad" / "ml-latest"
    bad.mkdir(parents=True)
    (bad / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,10,4.0,978300760\n1,20,1e30,978300761\n"
    )
    good = tmp_path / "good"
    (good / "ml-latest").mkdir(parents=True)
    shutil.copyfile(mirror / "ml-latest-small" / "ratings.csv", good / "ml-latest" / "ratings.csv")
    home = str(tmp_path / "home")
    raw = fetch_release("latest", home, tmp_path / "bad")
    with pytest.raises(MalformedRatings, match=r"line 3: '1,20,1e30,978300761'"):
        build_interactions("latest", raw, home)
    assert not raw.exists() and not Path(interactions_path(home, "latest")).exists()
    raw = fetch_release("latest", home, good)
    path, reused = build_interactions("latest", raw, home)
    assert not reused and len(pd.read_parquet(path)) == 100_836


def test_parsed_table_is_reused_only_when_its_marker_vouches_for_it(tmp_path: Path, mirror: Path) -> None:
    home = str(tmp_path / "home")
    raw = fetch_release("100k", home, mirror)
    path, reused = build_interactions("100k", raw, home)
    marker = json.loads(Path(interactions_marker_path(home, "100k")).read_text())
    assert not reused and marker["rows"] == 100_000
    assert marker["source"] == {"release": "100k", "ratings_sha256": RELEASES["100k"].ratings_sha256}
    assert build_interactions("100k", raw, home) == (path, True)

    good = Path(path).read_bytes()
    pd.DataFrame({"user_id": [1], "item_id": [1], "rating": [1e30], "timestamp": [0]}).to_parquet(path)
    assert build_interactions("100k", raw, home) == (path, False), "a table its marker does not vouch for"
    assert Path(path).read_bytes() == good
    Path(interactions_marker_path(home, "100k")).unlink()
    assert build_interactions("100k", raw, home) == (path, False), "a table without marker"
    _, reused = build_interactions("synthetic-50x40x1200", None, home, seed=3)
    assert not reused and build_interactions("synthetic-50x40x1200", None, home, seed=4)[1] is False
