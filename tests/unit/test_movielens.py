"""MovieLens parsing on small files in the recbole format (the real fetch runs elsewhere)."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.data.movielens import (
    INTERACTIONS_FILE,
    ITEMS_FILE,
    SHA256,
    dataset_dir,
    is_cached,
    load,
    read_interactions,
    read_items,
)

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
ITEM_HEADER = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"


def write_dataset(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INTERACTIONS_FILE).write_text(
        INTER_HEADER
        + "196\t242\t3\t881250949\n"  # row 1
        + "186\t302\t3\t891717742\n"  # row 2
        + "22\t377\t1\t878887116\n"  # row 3: earliest
        + "244\t51\t2\t881250949\n"  # row 4: same second as row 1
        + "166\t346\t5\t881250949\n",  # row 5: same second again
        encoding="utf-8",
    )
    (folder / ITEMS_FILE).write_text(
        ITEM_HEADER
        + "1\tToy Story\t1995\tAnimation Children's Comedy\n"
        + "543\tMisérables, Les\t1995\tDrama Musical\n"
        + "267\tunkonwn\tunkonwn\tunknown\n"
        + "1412\tLand Before Time III: The Time of the Great Giving (1995)\tV\tAnimation\n",
        encoding="utf-8",
    )
    return folder


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "datasets" / "ml-100k")


def test_interactions_are_rating_events_in_time_order(dataset: Path) -> None:
    events = read_interactions(dataset / INTERACTIONS_FILE)
    assert [e.event_id for e in events] == [
        "ml100k-3",
        "ml100k-1",
        "ml100k-4",
        "ml100k-5",
        "ml100k-2",
    ]
    first = events[0]
    assert (first.user_id, first.item_id, first.event_type) == ("22", "377", "rating")
    assert first.value == 1.0
    assert first.timestamp == 878887116.0
    assert [e.timestamp for e in events] == sorted(e.timestamp for e in events)


def test_timestamp_ties_keep_file_order(dataset: Path) -> None:
    events = read_interactions(dataset / INTERACTIONS_FILE)
    tied = [e.user_id for e in events if e.timestamp == 881250949.0]
    assert tied == ["196", "244", "166"]


def test_items_keep_raw_titles_and_genres(dataset: Path) -> None:
    items = {i.item_id: i for i in read_items(dataset / ITEMS_FILE, timestamp=5.0)}
    toy = items["1"]
    assert toy.event_id == "ml100k-item-1"
    assert toy.title == "Toy Story"
    assert toy.categories == ["Animation", "Children's", "Comedy"]
    assert toy.attributes == {"year": 1995.0}
    assert toy.timestamp == 5.0
    assert toy.op == "upsert"
    assert items["543"].title == "Misérables, Les"
    assert "Misérables, Les" in items["543"].text()


def test_bad_year_is_left_out_or_taken_from_the_title(dataset: Path) -> None:
    items = {i.item_id: i for i in read_items(dataset / ITEMS_FILE)}
    assert items["267"].attributes == {}
    assert items["267"].title == "unkonwn"
    assert items["1412"].attributes == {"year": 1995.0}


def test_load_stamps_items_with_the_first_interaction(dataset: Path) -> None:
    data = load(dataset.parent, download=False)
    assert len(data.items) == 4
    assert len(data.interactions) == 5
    assert data.user_count == 5
    assert {i.timestamp for i in data.items} == {878887116.0}


def test_crlf_and_trailing_blank_lines_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / INTERACTIONS_FILE
    path.write_bytes(INTER_HEADER.replace("\n", "\r\n").encode() + b"1\t2\t4.5\t100\r\n\r\n")
    [event] = read_interactions(path)
    assert (event.user_id, event.item_id, event.value, event.timestamp) == ("1", "2", 4.5, 100.0)


def test_wrong_header_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / INTERACTIONS_FILE
    path.write_text("user\titem\trating\ttime\n1\t2\t3\t4\n", encoding="utf-8")
    with pytest.raises(ValueError, match="expected header"):
        read_interactions(path)


def test_short_row_is_rejected_with_its_number(tmp_path: Path) -> None:
    path = tmp_path / INTERACTIONS_FILE
    path.write_text(INTER_HEADER + "1\t2\t3\t4\n1\t2\t3\n", encoding="utf-8")
    with pytest.raises(ValueError, match="row 2 has 3 fields"):
        read_interactions(path)


def test_invalid_value_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / INTERACTIONS_FILE
    path.write_text(INTER_HEADER + "1\t2\t3\t-5\n", encoding="utf-8")
    with pytest.raises(ValueError, match="timestamp"):
        read_interactions(path)


def test_cache_check_needs_the_pinned_content(dataset: Path) -> None:
    # Files of the right name but other content are not a cache hit: they get re-fetched.
    assert set(SHA256) == {INTERACTIONS_FILE, ITEMS_FILE}
    assert not is_cached(dataset)
    assert not is_cached(dataset.parent / "missing")


def test_data_dir_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path / "elsewhere"))
    assert dataset_dir() == tmp_path / "elsewhere" / "ml-100k"
    assert dataset_dir(tmp_path) == tmp_path / "ml-100k"
