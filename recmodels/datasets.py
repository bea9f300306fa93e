"""MovieLens releases: download or mirror, verify, extract, parse into the canonical interaction table.

``fetch_release(name, home)`` leaves GroupLens' files of one release, checked against published
SHA-256 sums, in ``<home>/raw/<name>/``; ``parse_ratings`` reads the ratings file into
user_id (int64), item_id (int64), rating (float32), timestamp (int64); ``load_dataset`` also
serves the synthetic shapes of :mod:`recmodels.synthetic`. Data: F. M. Harper and J. A. Konstan,
"The MovieLens Datasets: History and Context", ACM TiiS 5(4), 2015 (grouplens.org/datasets/movielens).

Sources, in order: the ``mirror`` argument, else ``$MOVIELENS_MIRROR``, else GroupLens. A mirror is a
folder, a ``file://`` URL or an ``http(s)://`` URL holding the release's zip (GroupLens' file name,
e.g. ``ml-10m.zip``, or ``<folder>.zip``) or its extracted ``<folder>/`` (e.g. ``ml-10M100K/``).
Every write goes to a temporary name in the destination folder and is renamed into place, with the
marker ``.verified.json`` (what was checked: zip and ratings sums, source, rows) inside, so a
``<home>/raw/<name>/`` folder is complete and verified when its marker matches its ratings file, and is
fetched again otherwise (a crashed fetch, a cache written by an older version, a file edited since).
Concurrent fetches of one release (threads or processes of one machine) queue on a file lock in
``<home>/locks/``: the first fetches, the others then find its verified folder.

Where no published SHA-256 covers the files (folder mirrors of 1m, 20m, 25m; 10m, 32m), the ratings file
is checked strictly instead: its release's format on the first line, a line end at the end (a truncated
file has none) and GroupLens' published number of ratings (e.g. 1,000,209 for ML-1M), so ML-100K's
``u.data`` rewritten with ``::`` is not taken for ML-1M.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal
from urllib.parse import urlparse

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
from filelock import FileLock
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from recmodels import __version__
from recmodels._columns import INTERACTION_COLUMNS, ITEM, RATING, TIMESTAMP, USER
from recmodels.errors import (
    ChecksumMismatch,
    CorruptArchive,
    DownloadFailed,
    MalformedRatings,
    NetworkError,
    UnknownDataset,
    UnknownFormat,
    UnsafeArchive,
)
from recmodels.synthetic import NAME_FORMS, SYNTHETIC_SHAPES, generate_synthetic, parse_synthetic_name

RatingsFormat = Literal["tab", "::", "csv"]
GROUPLENS = "https://files.grouplens.org/datasets/movielens"
CSV_HEADER = "userId,movieId,rating,timestamp"
_SEPARATORS: dict[str, str] = {"tab": "\t", "::": "::", "csv": ","}
_CHUNK = 1 << 20
MARKER = ".verified.json"
RATING_RANGE = (0.5, 5.0)  # MovieLens' star scale (half stars from ML-10M on)
#: The first data line of a ratings file in each format (ids and time integers, rating a number).
_FIRST_LINE = {
    "tab": re.compile(rb"\d+\t\d+\t\d+(\.\d+)?\t\d+\r?\n"),
    "::": re.compile(rb"\d+::\d+::\d+(\.\d+)?::\d+\r?\n"),
    "csv": re.compile(rb"\d+,\d+,\d+(\.\d+)?,\d+\r?\n"),
}
_PROGRESS_COLUMNS = (
    TextColumn("{task.description}"),
    BarColumn(),
    DownloadColumn(),
    TransferSpeedColumn(),
    TimeRemainingColumn(),
)


@dataclass(frozen=True)
class Release:
    """One GroupLens MovieLens release and where its ratings live inside the zip."""

    name: str
    folder: str  # top folder inside the zip
    ratings_file: str
    fmt: RatingsFormat
    zip_sha256: str | None = None
    ratings_sha256: str | None = None
    ratings_rows: int | None = None  # GroupLens' published number of ratings

    @property
    def header_lines(self) -> int:
        return int(self.fmt == "csv")

    @property
    def url(self) -> str:
        return f"{GROUPLENS}/ml-{self.name}.zip"

    @property
    def archive_names(self) -> tuple[str, ...]:
        """Names under which a mirror may hold the zip: GroupLens' own, then ``<folder>.zip``."""
        return tuple(dict.fromkeys((f"ml-{self.name}.zip", f"{self.folder}.zip")))


# Zip sums: tensorflow/datasets, tensorflow_datasets/url_checksums/movielens.txt (commit 1c076ac).
# Ratings-file sums: GroupLens' byte-exact files in the shared test mirror (its SHA256SUMS).
# GroupLens itself publishes only MD5s; 10m and 32m have no SHA-256 from a trustworthy source yet, and
# ``latest`` changes over time. Rating counts: each release's README on grouplens.org.
RELEASES: dict[str, Release] = {
    r.name: r
    for r in (
        Release(
            "100k",
            "ml-100k",
            "u.data",
            "tab",
            zip_sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
            ratings_sha256="06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
            ratings_rows=100_000,
        ),
        Release(
            "1m",
            "ml-1m",
            "ratings.dat",
            "::",
            zip_sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
            ratings_rows=1_000_209,
        ),
        Release("10m", "ml-10M100K", "ratings.dat", "::", ratings_rows=10_000_054),
        Release(
            "20m",
            "ml-20m",
            "ratings.csv",
            "csv",
            zip_sha256="96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
            ratings_rows=20_000_263,
        ),
        Release(
            "25m",
            "ml-25m",
            "ratings.csv",
            "csv",
            zip_sha256="8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
            ratings_rows=25_000_095,
        ),
        Release("32m", "ml-32m", "ratings.csv", "csv", ratings_rows=32_000_204),
        Release(
            "latest-small",
            "ml-latest-small",
            "ratings.csv",
            "csv",
            zip_sha256="696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
            ratings_sha256="aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
            ratings_rows=100_836,
        ),
        Release("latest", "ml-latest", "ratings.csv", "csv"),
    )
}


def get_release(name: str) -> Release:
    """The release called ``name``; :class:`UnknownDataset` listing every valid name otherwise."""
    if name in RELEASES:
        return RELEASES[name]
    hint = (
        " Synthetic data is generated, not fetched: use load_dataset()."
        if name.startswith("synthetic-")
        else ""
    )
    raise UnknownDataset(
        f"unknown dataset {name!r}. Valid names: {', '.join(RELEASES)}; "
        f"synthetic: {', '.join(SYNTHETIC_SHAPES)} or {NAME_FORMS}.{hint}"
    )


def benchmark_home() -> Path:
    """The local cache: ``$MOVIELENS_BENCHMARK_HOME``, else ``<$XDG_CACHE_HOME or ~/.cache>/movielens-benchmark``
    (also when ``$MOVIELENS_BENCHMARK_HOME`` is a URL: the flows keep their shared data there, see
    ``tasks/storage.py``, and the raw downloads here)."""
    if (home := os.environ.get("MOVIELENS_BENCHMARK_HOME")) and "://" not in home:
        return Path(home).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "movielens-benchmark"


def fetch_release(
    name: str, home: Path | str | None = None, mirror: Path | str | None = None, progress: bool = False
) -> Path:
    """``<home>/raw/<name>/`` holding the release's verified files (at least its ratings file).

    A folder already there is returned when its ``.verified.json`` matches its ratings file; otherwise
    it is fetched again. ``mirror`` (else ``$MOVIELENS_MIRROR``) replaces GroupLens as the source;
    ``progress`` shows a download bar.
    """
    release = get_release(name)
    home = Path(home or benchmark_home())
    target = home / "raw" / release.name
    target.parent.mkdir(parents=True, exist_ok=True)
    with lock(home, f"raw-{release.name}"):
        if verified_marker(release, target) is not None:
            return target
        for leftover in target.parent.glob(f".{release.name}.*.tmp"):  # of a killed fetch
            shutil.rmtree(leftover, ignore_errors=True)
        if target.exists():  # unverified: from a crash, an older version, or edited since
            shutil.rmtree(target)
        with tempfile.TemporaryDirectory(prefix=f".{release.name}.", suffix=".tmp", dir=target.parent) as tmp:
            staging = Path(tmp) / release.folder
            source, zip_sha256 = _stage(
                release, str(mirror or os.environ.get("MOVIELENS_MIRROR") or ""), staging, progress
            )
            marker = _check_ratings(release, staging / release.ratings_file, source, zip_sha256)
            pause_point("fetch")
            _write_json_atomic(staging / MARKER, marker)
            staging.rename(target)
    return target


def verified_marker(release: Release, folder: Path) -> dict[str, object] | None:
    """The marker of ``folder`` if it records a verified copy of ``release`` that its ratings file still
    matches (size and SHA-256), else None."""
    try:
        marker = json.loads((folder / MARKER).read_text())
        ratings = folder / release.ratings_file
        if (
            marker.get("release") != release.name
            or marker.get("ratings_size") != ratings.stat().st_size
            or (release.ratings_sha256 and marker.get("ratings_sha256") != release.ratings_sha256)
            or _sha256(ratings) != marker.get("ratings_sha256")
        ):
            return None
    except (OSError, ValueError, AttributeError):
        return None
    return marker


def discard_release(name: str, home: Path | str) -> None:
    """Delete the cached ``<home>/raw/<name>/`` (e.g. when its ratings turn out malformed at parse time)."""
    with lock(home, f"raw-{name}"):
        shutil.rmtree(Path(home) / "raw" / name, ignore_errors=True)


@contextmanager
def lock(home: Path | str, name: str) -> Iterator[None]:
    """Hold ``<home>/locks/<name>.lock`` (an OS lock: released when the process dies, even by SIGKILL)."""
    folder = Path(home) / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / f"{name}.lock"):
        yield


def pause_point(step: str) -> None:
    """Test seam for crash tests: when ``$MOVIELENS_BENCHMARK_PAUSE_AT`` is ``step``, print
    ``paused at <step>`` to stderr and sleep, so that a test can SIGKILL the process mid-step."""
    if os.environ.get("MOVIELENS_BENCHMARK_PAUSE_AT") == step:
        print(f"paused at {step}", file=sys.stderr, flush=True)
        time.sleep(3600)


def parse_ratings(path: Path | str, fmt: RatingsFormat) -> pd.DataFrame:
    """The ratings file ``path`` as the canonical table (pyarrow's multi-threaded CSV reader).

    ``fmt``: ``"tab"`` (ml-100k ``u.data``), ``"::"`` (ml-1m/ml-10m ``ratings.dat``) or ``"csv"``
    (``ratings.csv`` with the header ``userId,movieId,rating,timestamp``; CRLF line ends are fine).
    A line that does not parse raises :class:`MalformedRatings` with its 1-based number.
    """
    path = Path(path)
    if fmt not in _SEPARATORS:
        raise UnknownFormat(f"unknown ratings format {fmt!r}; use one of {list(_SEPARATORS)}.")
    types = {USER: pa.int64(), ITEM: pa.int64(), RATING: pa.float32(), TIMESTAMP: pa.int64()}
    columns = list(INTERACTION_COLUMNS)
    if fmt == "::":  # split on ':' and require the fields between the two colons to be empty
        columns = [USER, "_1", ITEM, "_2", RATING, "_3", TIMESTAMP]
        types |= {"_1": pa.null(), "_2": pa.null(), "_3": pa.null()}
    if not path.stat().st_size:
        raise MalformedRatings(
            f"{path} is empty: it has no ratings; fetch the release again or fix your mirror."
        )
    if fmt == "csv":
        with path.open("rb") as lines:
            header = lines.readline().decode("utf-8", "replace").strip()
        if header != CSV_HEADER:
            raise MalformedRatings(
                f"{path} line 1: expected the header {CSV_HEADER!r}, found {header!r}; "
                "add that header or parse the file with the format that matches it."
            )
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=columns, skip_rows=int(fmt == "csv")),
            parse_options=pacsv.ParseOptions(delimiter=_SEPARATORS[fmt][0], quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types=types, null_values=[""]),
        ).select(list(INTERACTION_COLUMNS))
    except pa.ArrowInvalid as err:
        raise _malformed(path, fmt, str(err)) from None
    frame = table.to_pandas()
    valid = (
        frame[RATING].between(*RATING_RANGE)
        & (frame[TIMESTAMP] >= 0)
        & (frame[USER] >= 0)
        & (frame[ITEM] >= 0)
    )
    if any(table.column(c).null_count for c in INTERACTION_COLUMNS) or not valid.all():
        raise _malformed(path, fmt, "a missing, negative or out-of-range value")
    if frame.empty:
        raise MalformedRatings(f"{path} has no ratings; fetch the release again or fix your mirror.")
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":
            raise MalformedRatings(
                f"{path} line {len(frame) + int(fmt == 'csv')}: the last line has no line end, so the file "
                "is truncated; fetch the release again."
            )
    return frame


def load_ratings(name: str, home: Path | str | None = None, mirror: Path | str | None = None) -> pd.DataFrame:
    """Fetch the release ``name`` (see :func:`fetch_release`) and parse its ratings file."""
    release = get_release(name)
    return parse_ratings(fetch_release(name, home, mirror) / release.ratings_file, release.fmt)


def load_dataset(name: str, home: Path | str | None = None, mirror: Path | str | None = None) -> pd.DataFrame:
    """The canonical table of a release (``100k`` … ``latest``) or a ``synthetic-…`` shape (seed 0)."""
    if name.startswith("synthetic-"):
        return generate_synthetic(*parse_synthetic_name(name))
    return load_ratings(name, home, mirror)


def _stage(release: Release, mirror: str, staging: Path, progress: bool) -> tuple[str, str | None]:
    """Put the release's files into ``staging``; return where they came from and the zip's SHA-256 when
    a zip was checked against the published sum (None otherwise)."""
    if not mirror:
        archive = staging.parent / f"ml-{release.name}.zip"
        if not _download(release.url, archive, progress):
            raise DownloadFailed(
                f"GroupLens has no {release.url} (HTTP 404); set MOVIELENS_MIRROR to a copy."
            )
        return release.url, _unpack(release, archive, release.url, staging)
    if mirror.startswith(("http://", "https://")):
        base = mirror.rstrip("/")
        for name in release.archive_names:
            archive = staging.parent / name
            if _download(f"{base}/{name}", archive, progress):
                return f"{base}/{name}", _unpack(release, archive, f"{base}/{name}", staging)
        url = f"{base}/{release.folder}/{release.ratings_file}"
        staging.mkdir()
        if _download(url, staging / release.ratings_file, progress):
            return url, None
        looked = [f"{base}/{n}" for n in release.archive_names] + [url]
        raise DownloadFailed(
            f"mirror {mirror} has no {release.name} release: looked for {', '.join(looked)}."
        )
    local = urllib.request.url2pathname(urlparse(mirror).path) if mirror.startswith("file:") else mirror
    root = Path(local).expanduser()
    folder = root / release.folder
    for name in release.archive_names:  # the zip first: its published sum covers every file
        if (root / name).is_file():
            return str(root / name), _unpack(release, root / name, str(root / name), staging)
    if (folder / release.ratings_file).is_file():
        _copy_files(folder, staging)
        return str(folder / release.ratings_file), None
    looked = [str(root / n) for n in release.archive_names] + [f"{folder}/{release.ratings_file}"]
    raise DownloadFailed(
        f"mirror {mirror} has no {release.name} release: looked for {', '.join(looked)}. "
        "Put one there, or unset MOVIELENS_MIRROR to download from GroupLens."
    )


def _unpack(release: Release, archive: Path, source: str, staging: Path) -> str | None:
    _verify(release, archive, release.zip_sha256, source)
    _extract_folder(archive, release.folder, staging)
    if not (staging / release.ratings_file).is_file():
        raise CorruptArchive(
            f"{source} has no {release.folder}/{release.ratings_file}, so it is not the {release.name} "
            "release; replace it with GroupLens' original."
        )
    return release.zip_sha256


def _check_ratings(release: Release, path: Path, source: str, zip_sha256: str | None) -> dict[str, object]:
    """Check the staged ratings file and return the marker recording what was checked.

    Always: the published SHA-256 of the file when there is one, the release's format on the first
    data line, a final line end, and the published number of ratings. Raises ChecksumMismatch or
    MalformedRatings naming the source and the fix; nothing is cached then.
    """
    sha256, lines, last = _digest_and_lines(path)
    _verify(release, path, release.ratings_sha256, source, actual=sha256)
    what = f"{release.folder}/{release.ratings_file} from {source}"
    fix = "replace it with GroupLens' original, or unset MOVIELENS_MIRROR to download it from GroupLens."
    with path.open("rb") as f:
        first = f.readline() if release.header_lines else b""
        data = f.readline()
    layout = _SEPARATORS[release.fmt].join(("user", "item", "rating", "timestamp")).replace("\t", "<TAB>")
    if not data:
        raise MalformedRatings(f"{what} has no ratings (empty or header only); {fix}")
    if release.fmt == "csv" and first.strip().decode("utf-8", "replace") != CSV_HEADER:
        raise MalformedRatings(f"{what} does not start with the header {CSV_HEADER!r}; {fix}")
    if not _FIRST_LINE[release.fmt].fullmatch(data):
        raise MalformedRatings(
            f"{what} line {1 + release.header_lines}: {data[:200].decode('utf-8', 'replace').rstrip()!r} is not {layout!r}, the format of "
            f"MovieLens {release.name}; {fix}"
        )
    if last != b"\n":
        raise MalformedRatings(f"{what} does not end with a line end: it is truncated; {fix}")
    rows = lines - release.header_lines
    if release.ratings_rows is not None and rows != release.ratings_rows:
        raise MalformedRatings(
            f"{what} has {rows:,} ratings but MovieLens {release.name} has {release.ratings_rows:,} "
            f"(GroupLens' published count), so it is not that release; {fix}"
        )
    checks = ["format", "line end"] + ["rating count"] * (release.ratings_rows is not None)
    checks += ["zip sha256"] * (zip_sha256 is not None) + ["ratings sha256"] * bool(release.ratings_sha256)
    return {
        "release": release.name,
        "source": source,
        "zip_sha256": zip_sha256,
        "ratings_file": release.ratings_file,
        "ratings_sha256": sha256,
        "ratings_size": path.stat().st_size,
        "ratings_rows": rows,
        "checks": checks,
        "version": __version__,
    }


def _digest_and_lines(path: Path) -> tuple[str, int, bytes]:
    """SHA-256, number of line ends and last byte of ``path``, in one pass."""
    digest, lines, last = hashlib.sha256(), 0, b""
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return digest.hexdigest(), lines, last


def _write_json_atomic(path: Path, value: dict[str, object]) -> None:
    with _atomic_write(path) as out:
        out.write(json.dumps(value, indent=2, sort_keys=True).encode())


def _extract_folder(archive: Path, folder: str, dest: Path) -> None:
    """Extract the members under ``folder/`` of the zip ``archive`` into ``dest`` (created).

    Raises :class:`UnsafeArchive` before writing anything if any member would land outside
    ``dest`` (absolute path, drive or ``..``) or is a symbolic link, :class:`CorruptArchive` if the zip
    cannot be read.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for member in members:
                parts = PurePosixPath(member.filename.replace("\\", "/")).parts
                if not parts or parts[0].startswith("/") or ":" in parts[0] or ".." in parts:
                    raise UnsafeArchive(
                        f"{archive.name} holds {member.filename!r}, which would be written outside "
                        f"{dest}; nothing was extracted. Delete it: it is not a GroupLens original."
                    )
                if stat.S_ISLNK(member.external_attr >> 16):
                    raise UnsafeArchive(
                        f"{archive.name} holds the symbolic link {member.filename!r}, which could point "
                        "outside the cache; nothing was extracted. Delete it: it is not a GroupLens original."
                    )
            dest.mkdir(parents=True, exist_ok=True)
            for member in members:
                name = member.filename.replace("\\", "/")
                if member.is_dir() or not name.startswith(f"{folder}/"):
                    continue
                out = dest / name.removeprefix(f"{folder}/")
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise CorruptArchive(
            f"{archive.name} is not a readable zip ({err}): a truncated or damaged download. "
            "Delete it (or fix your mirror) and fetch again."
        ) from err


def _verify(
    release: Release, path: Path, expected: str | None, source: str, actual: str | None = None
) -> None:
    """:class:`ChecksumMismatch` unless ``path`` hashes to ``expected`` (no check when it is None)."""
    if expected is None or (actual := actual or _sha256(path)) == expected:
        return
    fix = (
        "Retry the download; if it fails again, GroupLens changed the file: please report it."
        if source == release.url
        else "The mirror's copy is not GroupLens' original: replace it, or unset MOVIELENS_MIRROR."
    )
    what = path.name if path.suffix == ".zip" else f"{release.folder}/{path.name}"
    raise ChecksumMismatch(
        f"{what} from {source} has sha256 {actual} but {release.name} expects {expected}; "
        f"it was not cached. {fix}"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_files(src: Path, dest: Path) -> None:
    """Copy the regular files below ``src`` into ``dest`` (contents only, not read-only modes)."""
    for path in src.rglob("*"):
        if path.is_file():
            out = dest / path.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out)


def _download(url: str, dest: Path, progress: bool, attempts: int = 4, backoff_s: float = 0.5) -> bool:
    """Stream ``url`` into ``dest`` atomically; False (nothing written) if the server has no such file.

    Connection errors, timeouts, short bodies and HTTP 429/5xx are retried with exponential backoff.
    """
    error: Exception | None = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            _stream(url, dest, progress)
            return True
        except urllib.error.HTTPError as err:
            if err.code in (404, 410):
                return False
            if err.code < 500 and err.code != 429:
                raise DownloadFailed(f"{url} answered HTTP {err.code} {err.reason}; check the URL.") from err
            error = err
        except (OSError, http.client.HTTPException) as err:
            error = err
    raise NetworkError(
        f"could not download {url} ({error}) in {attempts} attempts; check your connection, or set "
        "MOVIELENS_MIRROR to a folder or URL holding the release."
    )


def _stream(url: str, dest: Path, progress: bool) -> None:
    """One download attempt, in chunks; a body shorter than its Content-Length raises IncompleteRead."""
    request = urllib.request.Request(url, headers={"User-Agent": f"movielens-benchmark/{__version__}"})
    with (
        urllib.request.urlopen(request, timeout=60) as response,
        _atomic_write(dest) as out,
        Progress(*_PROGRESS_COLUMNS, disable=not progress) as bar,
    ):
        size = int(response.headers.get("Content-Length") or 0) or None
        task = bar.add_task(dest.name, total=size)
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            bar.advance(task, len(chunk))
        if size is not None and out.tell() != size:
            raise http.client.IncompleteRead(b"", size - out.tell())


@contextmanager
def _atomic_write(dest: Path) -> Iterator[BinaryIO]:
    """A file that appears at ``dest`` (``os.replace`` of a unique ``.part``) only if the block succeeds."""
    fd, part = tempfile.mkstemp(prefix=f"{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.replace(part, dest)
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise


def _malformed(path: Path, fmt: str, problem: str) -> MalformedRatings:
    """:class:`MalformedRatings` naming the first line that is not ``user<sep>item<sep>rating<sep>time``."""
    sep = _SEPARATORS[fmt]
    layout = sep.join(("user", "item", "rating", "timestamp")).replace("\t", "<TAB>")
    with path.open(encoding="utf-8", errors="replace", newline="") as lines:
        for number, line in enumerate(lines, start=1):
            text = line.rstrip("\r\n")
            if text and not (fmt == "csv" and number == 1) and not _is_rating(text.split(sep)):
                return MalformedRatings(
                    f"{path} line {number}: {text[:200]!r} is not {layout!r} with non-negative integer ids "
                    f"and time and a rating from {RATING_RANGE[0]} to {RATING_RANGE[1]}; fix or delete that "
                    "line, or fetch the release again."
                )
    return MalformedRatings(f"{path} cannot be parsed as {layout!r} ({problem}); fetch the release again.")


def _is_rating(fields: list[str]) -> bool:
    """Whether ``fields`` are an integer user, item and timestamp around a finite rating."""
    if len(fields) != 4:
        return False
    try:
        user, item, timestamp = int(fields[0]), int(fields[1]), int(fields[3])
        rating = float(fields[2])
    except ValueError:
        return False
    return min(user, item, timestamp) >= 0 and RATING_RANGE[0] <= rating <= RATING_RANGE[1]
