"""The data layer on real GroupLens files (shared mirror) and on small archives built in tmp_path.

Covers the release table, folder / zip / file:// / HTTP mirrors (with retries), checksums, unsafe and
corrupt archives, malformed lines, concurrent fetches and the cache. Nothing touches the internet.
"""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recmodels.datasets import (
    RELEASES,
    benchmark_home,
    fetch_release,
    get_release,
    load_dataset,
    load_ratings,
    parse_ratings,
)
from recmodels.errors import (
    ChecksumMismatch,
    CorruptArchive,
    DownloadFailed,
    MalformedRatings,
    UnknownDataset,
    UnknownFormat,
    UnsafeArchive,
)

ROWS = [(1, 10, 5.0, 978300760), (1, 20, 3.5, 978302109), (2, 10, 1.0, 978301968)]


def make_zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return path


def ratings_text(fmt: str, repeat: int = 1) -> str:
    """ROWS (``repeat`` times) in a release's format: csv with header and CRLF, tab or ``::``."""
    if fmt == "csv":
        lines = "".join(f"{u},{i},{r},{t}\r\n" for u, i, r, t in ROWS)
        return "userId,movieId,rating,timestamp\r\n" + lines * repeat
    sep = "\t" if fmt == "tab" else "::"
    return "".join(f"{u}{sep}{i}{sep}{r:g}{sep}{t}\n" for u, i, r, t in ROWS) * repeat


def expected_rows() -> pd.DataFrame:
    df = pd.DataFrame(ROWS, columns=["user_id", "item_id", "rating", "timestamp"])
    return df.astype({"rating": "float32"})


def published_rows(monkeypatch: pytest.MonkeyPatch, name: str, rows: int) -> None:
    """Make release ``name`` expect ``rows`` ratings, for small archives in its layout."""
    monkeypatch.setitem(RELEASES, name, replace(RELEASES[name], ratings_rows=rows))


def raw_entries(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "raw").iterdir())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the release table --------------------------------------------------------------------------


def test_release_table() -> None:
    assert list(RELEASES) == ["100k", "1m", "10m", "20m", "25m", "32m", "latest-small", "latest"]
    assert RELEASES["10m"].url == "https://files.grouplens.org/datasets/movielens/ml-10m.zip"
    assert RELEASES["10m"].folder == "ml-10M100K"
    assert RELEASES["10m"].archive_names == ("ml-10m.zip", "ml-10M100K.zip")
    assert RELEASES["latest-small"].url.endswith("/ml-latest-small.zip")
    assert {n: r.fmt for n, r in RELEASES.items()} == {
        "100k": "tab",
        "1m": "::",
        "10m": "::",
        "20m": "csv",
        "25m": "csv",
        "32m": "csv",
        "latest-small": "csv",
        "latest": "csv",
    }
    assert RELEASES["latest"].zip_sha256 is None and RELEASES["latest"].ratings_sha256 is None


def test_ratings_checksums_match_the_mirrors_sha256sums(mirror: Path) -> None:
    sums = dict(line.split()[::-1] for line in (mirror / "SHA256SUMS").read_text().splitlines())
    assert RELEASES["100k"].ratings_sha256 == sums["./ml-100k/u.data"]
    assert RELEASES["latest-small"].ratings_sha256 == sums["./ml-latest-small/ratings.csv"]


def test_unknown_names_list_every_valid_name() -> None:
    with pytest.raises(UnknownDataset) as err:
        get_release("2m")
    for name in [*RELEASES, "synthetic-20m", "synthetic-<users>x<items>x<interactions>"]:
        assert name in str(err.value)
    with pytest.raises(UnknownDataset, match="generated, not fetched"):
        fetch_release("synthetic-20m", Path("unused"))
    with pytest.raises(UnknownDataset):
        load_dataset("ml-100k")


def test_benchmark_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MOVIELENS_BENCHMARK_HOME", str(tmp_path / "bench"))
    assert benchmark_home() == tmp_path / "bench"
    monkeypatch.delenv("MOVIELENS_BENCHMARK_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert benchmark_home() == tmp_path / "xdg" / "movielens-benchmark"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert benchmark_home() == Path.home() / ".cache" / "movielens-benchmark"


# --- parsing the real files ---------------------------------------------------------------------


def test_parse_real_100k(mirror: Path) -> None:
    df = parse_ratings(mirror / "ml-100k" / "u.data", "tab")
    assert list(df.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert [str(t) for t in df.dtypes] == ["int64", "int64", "float32", "int64"]
    assert len(df) == 100_000
    assert df["user_id"].nunique() == 943 and df["item_id"].nunique() == 1_682
    # Counts from the shared README.
    counts = df["rating"].value_counts().sort_index()
    assert counts.to_dict() == {1.0: 6_110, 2.0: 11_370, 3.0: 27_145, 4.0: 34_174, 5.0: 21_201}
    assert (df["timestamp"].min(), df["timestamp"].max()) == (874_724_710, 893_286_638)


def test_parse_real_latest_small_with_crlf(mirror: Path) -> None:
    path = mirror / "ml-latest-small" / "ratings.csv"
    assert b"\r\n" in path.read_bytes()[:100]
    df = parse_ratings(path, "csv")
    assert len(df) == 100_836
    assert df["user_id"].nunique() == 610 and df["item_id"].nunique() == 9_724
    assert set(np.unique(df["rating"])) == {r / 2 for r in range(1, 11)}
    assert (df["timestamp"].min(), df["timestamp"].max()) == (828_124_615, 1_537_799_250)
    assert df.iloc[0].tolist() == [1, 1, 4.0, 964_982_703]


@pytest.mark.parametrize("fmt", ["tab", "::", "csv"])
def test_parse_each_format(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "ratings"
    path.write_text(ratings_text(fmt), newline="")
    pd.testing.assert_frame_equal(parse_ratings(path, fmt), expected_rows())


@pytest.mark.parametrize(
    ("fmt", "text", "line"),
    [
        ("tab", "1\t10\t5\t978300760\n2\t20\t4\t978300761\n3\t30\t4\n", 3),
        ("tab", "1\t10\t5\t978300760\n1\t11\tfive\t978300761\n", 2),
        ("::", "1::10::5::978300760\n1::11:4::978300761\n", 2),
        ("::", "1::10::5::978300760\n1:x:11::4::978300761\n", 2),
        ("csv", "userId,movieId,rating,timestamp\r\n1,10,5.0,97\r\n1,11,,98\r\n", 3),
        ("csv", "userId,movieId,rating,timestamp\n1,10,nan,97\n", 2),
        ("csv", "userId,movieId,rating,timestamp\n1,10,4.0,97\n1,10,4.0,97,9\n", 3),
        ("csv", "1,10,5.0,97\n", 1),
    ],
)
def test_malformed_line_is_named(tmp_path: Path, fmt: str, text: str, line: int) -> None:
    path = tmp_path / "ratings.txt"
    path.write_text(text, newline="")
    with pytest.raises(MalformedRatings, match=rf"ratings\.txt line {line}: "):
        parse_ratings(path, fmt)


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(UnknownFormat, match=r"\['tab', '::', 'csv'\]"):
        parse_ratings(tmp_path / "x", "tsv")  # type: ignore[arg-type]


# --- mirrors ------------------------------------------------------------------------------------


def test_folder_mirror_then_cache_hit(tmp_path: Path, mirror: Path) -> None:
    home = tmp_path / "home"
    folder = fetch_release("100k", home, mirror)
    assert folder == home / "raw" / "100k"
    assert sha256(folder / "u.data") == RELEASES["100k"].ratings_sha256
    assert (folder / "u.item").read_bytes() == (mirror / "ml-100k" / "u.item").read_bytes()
    assert raw_entries(home) == ["100k"]  # no staging leftovers
    # Second call: served from the cache, the (now bogus) mirror is never read.
    assert fetch_release("100k", home, tmp_path / "no-such-mirror") == folder
    df = load_ratings("100k", home, tmp_path / "no-such-mirror")
    assert len(df) == 100_000


def test_env_mirror_and_load_dataset(tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOVIELENS_MIRROR", str(mirror))
    df = load_dataset("latest-small", home=tmp_path)
    assert len(df) == 100_836
    assert load_dataset("synthetic-50x40x1200").shape == (1_200, 4)


@pytest.mark.parametrize("archive", ["ml-10m.zip", "ml-10M100K.zip"])
def test_zip_mirror_10m_layout(tmp_path: Path, archive: str, monkeypatch: pytest.MonkeyPatch) -> None:
    published_rows(monkeypatch, "10m", len(ROWS))
    make_zip(
        tmp_path / archive,
        {
            "ml-10M100K/ratings.dat": ratings_text("::"),
            "ml-10M100K/movies.dat": "10::Toy Story (1995)::Animation\n",
            "ml-10M100K/": "",
        },
    )
    home = tmp_path / "home"
    folder = fetch_release("10m", home, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [".verified.json", "movies.dat", "ratings.dat"]
    pd.testing.assert_frame_equal(load_ratings("10m", home), expected_rows())


def test_file_url_mirror_latest_csv(tmp_path: Path) -> None:
    source = tmp_path / "mirror dir"
    source.mkdir()
    make_zip(source / "ml-latest.zip", {"ml-latest/ratings.csv": ratings_text("csv")})
    df = load_ratings("latest", tmp_path / "home", source.as_uri())
    pd.testing.assert_frame_equal(df, expected_rows())


def test_mirror_without_the_release(tmp_path: Path) -> None:
    with pytest.raises(DownloadFailed) as err:
        fetch_release("32m", tmp_path / "home", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "ml-32m.zip") in message and "ml-32m/ratings.csv" in message


# --- bad archives and checksums -----------------------------------------------------------------


def test_zip_checksum_mismatch_is_not_cached(tmp_path: Path) -> None:
    built = make_zip(tmp_path / "ml-20m.zip", {"ml-20m/ratings.csv": ratings_text("csv")})
    home = tmp_path / "home"
    with pytest.raises(ChecksumMismatch) as err:
        fetch_release("20m", home, tmp_path)
    message = str(err.value)
    assert "ml-20m.zip" in message and sha256(built) in message
    assert RELEASES["20m"].zip_sha256 in message and "mirror" in message
    assert raw_entries(home) == []


def test_ratings_checksum_mismatch_is_not_cached(tmp_path: Path, mirror: Path) -> None:
    shutil.copytree(mirror / "ml-latest-small", tmp_path / "ml-latest-small", copy_function=shutil.copyfile)
    ratings = tmp_path / "ml-latest-small" / "ratings.csv"
    ratings.chmod(0o644)
    ratings.write_bytes(ratings.read_bytes().replace(b"1,1,4.0,964982703", b"1,1,5.0,964982703", 1))
    home = tmp_path / "home"
    with pytest.raises(ChecksumMismatch) as err:
        fetch_release("latest-small", home, tmp_path)
    message = str(err.value)
    assert "ml-latest-small/ratings.csv" in message and str(ratings) in message
    assert sha256(ratings) in message and RELEASES["latest-small"].ratings_sha256 in message
    assert raw_entries(home) == []


@pytest.mark.parametrize("member", ["ml-latest/../../evil.txt", "../evil.txt", "/tmp/evil.txt"])
def test_zip_slip_member_is_refused(tmp_path: Path, member: str) -> None:
    make_zip(tmp_path / "ml-latest.zip", {"ml-latest/ratings.csv": ratings_text("csv"), member: "owned"})
    home = tmp_path / "a" / "b"
    with pytest.raises(UnsafeArchive, match="outside"):
        fetch_release("latest", home, tmp_path)
    assert raw_entries(home) == []
    assert not list(tmp_path.rglob("evil.txt"))


def test_truncated_zip(tmp_path: Path) -> None:
    built = make_zip(tmp_path / "ml-32m.zip", {"ml-32m/ratings.csv": ratings_text("csv", 50)})
    built.write_bytes(built.read_bytes()[: built.stat().st_size // 2])
    home = tmp_path / "home"
    with pytest.raises(CorruptArchive, match=r"ml-32m\.zip is not a readable zip"):
        fetch_release("32m", home, tmp_path)
    assert raw_entries(home) == []


def test_zip_of_another_release(tmp_path: Path) -> None:
    make_zip(tmp_path / "ml-32m.zip", {"ml-25m/ratings.csv": ratings_text("csv")})
    with pytest.raises(CorruptArchive, match=r"no ml-32m/ratings\.csv"):
        fetch_release("32m", tmp_path / "home", tmp_path)


def test_concurrent_fetches_end_with_one_valid_folder(tmp_path: Path) -> None:
    make_zip(tmp_path / "ml-latest.zip", {"ml-latest/ratings.csv": ratings_text("csv", 20_000)})
    home = tmp_path / "home"
    barrier = threading.Barrier(4)
    results: list[Path | BaseException] = []

    def fetch() -> None:
        barrier.wait()
        try:
            results.append(fetch_release("latest", home, tmp_path))
        except BaseException as err:
            results.append(err)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [home / "raw" / "latest"] * 4
    assert raw_entries(home) == ["latest"]
    assert len(parse_ratings(home / "raw" / "latest" / "ratings.csv", "csv")) == 3 * 20_000


# --- HTTP mirror on 127.0.0.1 -------------------------------------------------------------------


@dataclass
class Server:
    url: str
    requests: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)  # "503" or "short", consumed per zip request


@pytest.fixture
def http_mirror(tmp_path: Path) -> Iterator[Callable[[Path], Server]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def serve(root: Path) -> Server:
        state = Server(url="")

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                state.requests.append(self.path)
                fault = state.faults.pop(0) if self.path.endswith(".zip") and state.faults else ""
                if fault == "503":
                    self.send_error(503, "try later")
                elif fault == "short":
                    body = (root / self.path.lstrip("/")).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                else:
                    super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        state.url = f"http://127.0.0.1:{server.server_port}"
        return state

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_http_mirror_retries_503_and_short_body(
    tmp_path: Path, http_mirror: Callable[[Path], Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    published_rows(monkeypatch, "32m", 3_000)
    root = tmp_path / "www"
    root.mkdir()
    make_zip(root / "ml-32m.zip", {"ml-32m/ratings.csv": ratings_text("csv", 1_000)})
    server = http_mirror(root)
    server.faults += ["503", "short"]
    home = tmp_path / "home"
    df = load_ratings("32m", home, server.url)
    assert len(df) == 3_000
    assert server.requests == ["/ml-32m.zip"] * 3
    assert raw_entries(home) == ["32m"]
    assert sorted(p.name for p in (home / "raw" / "32m").iterdir()) == [".verified.json", "ratings.csv"]


def test_http_mirror_of_extracted_folder(
    tmp_path: Path, mirror: Path, http_mirror: Callable[[Path], Server]
) -> None:
    server = http_mirror(mirror)
    folder = fetch_release("latest-small", tmp_path / "home", server.url + "/")
    assert sha256(folder / "ratings.csv") == RELEASES["latest-small"].ratings_sha256
    assert server.requests == ["/ml-latest-small.zip", "/ml-latest-small/ratings.csv"]


def test_http_mirror_without_the_release(tmp_path: Path, http_mirror: Callable[[Path], Server]) -> None:
    server = http_mirror(tmp_path)
    with pytest.raises(DownloadFailed) as err:
        fetch_release("10m", tmp_path / "home", server.url)
    for url in ("/ml-10m.zip", "/ml-10M100K.zip", "/ml-10M100K/ratings.dat"):
        assert server.url + url in str(err.value)
