"""Tests for fedrec.data.readers (tiny hand-written files plus the bundled ML-100K)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from fedrec.data.readers import (
    DataFormatError,
    RawData,
    bundled_path,
    read_interactions,
)

GENRE_FLAGS_ACTION_COMEDY = "|".join("1" if g in (1, 5) else "0" for g in range(19))
NO_GENRES = "|".join("0" for _ in range(19))


def write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def raises_at(call, filename, line):
    """Run ``call`` expecting a DataFormatError naming ``filename`` and ``line``."""
    with pytest.raises(DataFormatError) as info:
        call()
    message = str(info.value)
    assert filename in message, message
    if line is not None:
        assert re.search(rf"\bline {line}\b", message), message
    return message


# --------------------------------------------------------------------------- #
# Fixtures: tiny datasets
# --------------------------------------------------------------------------- #


@pytest.fixture
def ml100k(tmp_path):
    folder = tmp_path / "ml-100k"
    write(folder / "u.data", "1\t10\t5\t881250949\n2\t10\t3\t891717742\n1\t20\t4\t878887116\n")
    write(
        folder / "u.item",
        f"10|Caf\u00e9 Movie (1995)|01-Jan-1995||http://x|{GENRE_FLAGS_ACTION_COMEDY}\n"
        f"20|unknown||||{NO_GENRES}\n"
        f"30|Later (1998)|22-Mar-1998||http://y|{NO_GENRES}\n",
        encoding="latin-1",
    )
    write(folder / "u.user", "\n1|24|M|technician|85711\n2|53|F|other|94043\n")
    return folder


@pytest.fixture
def ml1m(tmp_path):
    folder = tmp_path / "ml-1m"
    write(
        folder / "ratings.dat",
        "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n",
    )
    write(
        folder / "movies.dat",
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
        "7::Am\u00e9lie (2001)::Comedy|Romance\n",
        encoding="latin-1",
    )
    write(folder / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    return folder


@pytest.fixture
def mlcsv(tmp_path):
    folder = tmp_path / "ml-latest-small"
    write(
        folder / "ratings.csv",
        "userId,movieId,rating,timestamp\n"
        "1,1,4.0,964982703\n1,3,3.5,964981247\n6,1,0.5,845553522\n",
    )
    write(
        folder / "movies.csv",
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '3,"American President, The (1995)",Comedy|Drama|Romance\n'
        "5,Babylon 5,(no genres listed)\n",
    )
    return folder


# --------------------------------------------------------------------------- #
# Formats
# --------------------------------------------------------------------------- #


def test_ml100k_tiny(ml100k):
    raw = read_interactions(ml100k)
    assert isinstance(raw, RawData)
    assert raw.format == "ml-100k" and raw.name == "ml-100k"
    assert raw.source == str(ml100k / "u.data")
    np.testing.assert_array_equal(raw.user, [1, 2, 1])
    np.testing.assert_array_equal(raw.item, [10, 10, 20])
    np.testing.assert_array_equal(raw.rating, [5.0, 3.0, 4.0])
    np.testing.assert_array_equal(raw.timestamp, [881250949, 891717742, 878887116])
    assert raw.user.dtype == np.int64 and raw.rating.dtype == np.float64
    assert raw.timestamp.dtype == np.int64

    info = raw.item_info
    np.testing.assert_array_equal(info.item_ids, [10, 20, 30])
    assert info.item_ids.dtype == np.int64
    assert len(info.genre_names) == 19 and info.genre_names[1] == "Action"
    assert info.genres.dtype == np.float32 and info.genres.shape == (3, 19)
    assert set(np.flatnonzero(info.genres[0])) == {1, 5}
    assert info.genres[1].sum() == 0
    np.testing.assert_array_equal(info.year, [1995.0, np.nan, 1998.0])

    users = raw.user_info
    np.testing.assert_array_equal(users.user_ids, [1, 2])
    assert users.gender.tolist() == ["M", "F"]
    np.testing.assert_array_equal(users.age, [24, 53])
    assert users.age.dtype == np.int64


def test_ml100k_u_genre_sets_genre_columns(ml100k):
    write(ml100k / "u.genre", "Drama|1\nComedy|0\nHorror|2\n\n")
    write(ml100k / "u.item", "10|A (1990)|01-Jan-1990||u|0|1|1\n20|B (1991)|01-Jan-1991||u|1|0|0\n")
    info = read_interactions(ml100k).item_info
    assert info.genre_names == ("Comedy", "Drama", "Horror")
    np.testing.assert_array_equal(info.genres, [[0, 1, 1], [1, 0, 0]])


def test_ml100k_data_file_path_finds_side_files(ml100k):
    raw = read_interactions(ml100k / "u.data")
    assert raw.format == "ml-100k"
    assert raw.item_info is not None and raw.user_info is not None


def test_ml100k_without_side_files(tmp_path):
    write(tmp_path / "u.data", "1\t2\t3\t4\n")
    raw = read_interactions(tmp_path)
    assert raw.item_info is None and raw.user_info is None


def test_ml100k_by_path(shared_data):
    raw = read_interactions(shared_data("ml-100k"))
    assert len(raw.user) == 100_000
    assert len(np.unique(raw.user)) == 943
    assert len(np.unique(raw.item)) == 1682
    assert raw.item_info.genres.shape == (1682, 19)
    assert len(raw.item_info.genre_names) == 19
    assert np.isnan(raw.item_info.year).sum() == 1  # item 267 has no release date
    assert len(raw.user_info.user_ids) == 943
    assert set(raw.user_info.gender.tolist()) == {"M", "F"}
    assert raw.rating.min() == 1 and raw.rating.max() == 5


def test_bundled_by_name():
    raw = read_interactions("ml-latest-small")
    assert raw.format == "ml-csv" and raw.name == "ml-latest-small"
    assert len(raw.user) == 100_836 and raw.rating.min() == 0.5 and raw.rating.max() == 5
    assert raw.source == str(bundled_path() / "ratings.csv")
    assert read_interactions("ml-latest-small", format="ml-csv").user.shape == (100_836,)
    assert raw.item_info.genres.shape == (9742, 19) and np.isnan(raw.item_info.year).sum() == 13
    assert (bundled_path() / "README.txt").is_file()  # its licence ships with it


def test_unknown_items_and_short_users_are_kept_and_said(tmp_path, caplog):
    folder = tmp_path / "small"
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.0,1\n1,11,4.0,2\n1,12,4.0,3\n"
                                        "2,10,5.0,4\n2,99,3.0,5\n")
    (folder / "movies.csv").write_text("movieId,title,genres\n10,A (1990),Drama\n11,B (1991),Drama\n"
                                       "12,C (1992),Comedy\n13,D (1993),Comedy\n")
    from fedrec.data import load_dataset

    with caplog.at_level("WARNING", logger="fedrec.data"):
        ds = load_dataset(str(folder))
    assert ds.n_items == 5 and 99 in ds.item_ids.tolist() and 13 in ds.item_ids.tolist()
    assert ds.info["notes"] == [
        "1 interacted item(s) are not in the item metadata: kept, without genres or year",
        "1 item(s) of the item metadata have no interaction: kept in the ranked catalogue (they can be "
        "recommended, never hit)",
        "1 user(s) have fewer than 3 interactions: kept in training, not evaluated (leave-last-out needs 3)",
    ]
    said = [r.getMessage() for r in caplog.records if r.name == "fedrec.data"]
    assert len(said) == 3 and all(line.startswith(str(folder / "ratings.csv")) for line in said)


def test_ml1m_tiny(ml1m):
    raw = read_interactions(ml1m)
    assert raw.format == "ml-1m" and raw.name == "ml-1m"
    np.testing.assert_array_equal(raw.user, [1, 1, 2])
    np.testing.assert_array_equal(raw.item, [1193, 661, 1193])
    np.testing.assert_array_equal(raw.rating, [5, 3, 4])
    np.testing.assert_array_equal(raw.timestamp, [978300760, 978302109, 978298413])

    info = raw.item_info
    np.testing.assert_array_equal(info.item_ids, [1193, 661, 7])
    assert info.genre_names == ("Animation", "Children's", "Comedy", "Drama", "Musical", "Romance")
    np.testing.assert_array_equal(info.genres[0], [0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(info.genres[1], [1, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(info.year, [1975, 1996, 2001])

    users = raw.user_info
    assert users.gender.tolist() == ["F", "M"]
    np.testing.assert_array_equal(users.age, [1, 56])


def test_ml_csv_tiny(mlcsv):
    raw = read_interactions(mlcsv)
    assert raw.format == "ml-csv" and raw.name == "ml-latest-small"
    assert raw.source == str(mlcsv / "ratings.csv")
    np.testing.assert_array_equal(raw.user, [1, 1, 6])
    np.testing.assert_array_equal(raw.item, [1, 3, 1])
    np.testing.assert_array_equal(raw.rating, [4.0, 3.5, 0.5])
    np.testing.assert_array_equal(raw.timestamp, [964982703, 964981247, 845553522])
    assert raw.user_info is None

    info = raw.item_info
    np.testing.assert_array_equal(info.item_ids, [1, 3, 5])
    assert "Adventure" in info.genre_names and "(no genres listed)" not in info.genre_names
    assert info.genres[2].sum() == 0  # "(no genres listed)"
    comedy = info.genre_names.index("Comedy")
    assert info.genres[1, comedy] == 1  # the quoted title with a comma parsed correctly
    np.testing.assert_array_equal(info.year, [1995, 1995, np.nan])


def test_generic_csv_custom_columns(tmp_path):
    path = write(
        tmp_path / "clicks.csv", "uid,when,iid,score\n7,100,42,1.5\n8,50,42,2\n7,75,43,0\n"
    )
    raw = read_interactions(
        path, user_col="uid", item_col="iid", rating_col="score", timestamp_col="when"
    )
    assert raw.format == "generic" and raw.name == "clicks" and raw.source == str(path)
    np.testing.assert_array_equal(raw.user, [7, 8, 7])
    assert raw.user.dtype == np.int64 and raw.item.dtype == np.int64
    np.testing.assert_array_equal(raw.item, [42, 42, 43])
    np.testing.assert_array_equal(raw.rating, [1.5, 2.0, 0.0])
    np.testing.assert_array_equal(raw.timestamp, [100, 50, 75])
    assert raw.item_info is None and raw.user_info is None


def test_generic_without_rating_and_timestamp(tmp_path):
    path = write(tmp_path / "x.csv", "user,item\n1,2\n3,4\n5,6\n")
    raw = read_interactions(path)
    assert np.isnan(raw.rating).all() and raw.rating.shape == (3,)
    np.testing.assert_array_equal(raw.timestamp, [0, 1, 2])
    assert raw.timestamp.dtype == np.int64


@pytest.mark.parametrize("sep", ["\t", ";", "|"])
def test_generic_sniffs_separator(tmp_path, sep):
    path = write(tmp_path / "x.tsv", f"user{sep}item{sep}rating\n1{sep}2{sep}3\n4{sep}5{sep}1\n")
    raw = read_interactions(path, rating_col="rating")
    np.testing.assert_array_equal(raw.item, [2, 5])
    np.testing.assert_array_equal(raw.rating, [3, 1])


def test_generic_explicit_separator(tmp_path):
    path = write(tmp_path / "x.txt", "user item\n1 2\n3 4\n")
    raw = read_interactions(path, sep=" ")
    np.testing.assert_array_equal(raw.user, [1, 3])


def test_generic_string_ids(tmp_path):
    path = write(tmp_path / "x.csv", "user,item\nalice,1\nbob,2\n7,x9\n")
    raw = read_interactions(path)
    assert raw.user.dtype == object and raw.user.tolist() == ["alice", "bob", "7"]
    assert raw.item.dtype == object and raw.item.tolist() == ["1", "2", "x9"]
    assert all(isinstance(u, str) for u in raw.user)


def test_generic_string_ids_strict_path_matches(tmp_path):
    # A blank line and a non-inferable column force the text parser; results match.
    path = write(tmp_path / "x.csv", "user,item,t\nalice,1,5\n\nbob,2,6\n")
    raw = read_interactions(path, timestamp_col="t")
    assert raw.user.tolist() == ["alice", "bob"]
    np.testing.assert_array_equal(raw.item, [1, 2])
    np.testing.assert_array_equal(raw.timestamp, [5, 6])


def test_generic_parquet(tmp_path):
    path = tmp_path / "events.parquet"
    pd.DataFrame(
        {"u": ["a", "b", "a"], "i": [3, 4, 5], "r": [1.0, 2.0, 3.0], "ts": [10, 20, 30]}
    ).to_parquet(path)
    raw = read_interactions(path, user_col="u", item_col="i", rating_col="r", timestamp_col="ts")
    assert raw.format == "generic" and raw.name == "events"
    assert raw.user.tolist() == ["a", "b", "a"]
    np.testing.assert_array_equal(raw.item, [3, 4, 5])
    assert raw.item.dtype == np.int64
    np.testing.assert_array_equal(raw.rating, [1, 2, 3])
    np.testing.assert_array_equal(raw.timestamp, [10, 20, 30])


def test_generic_parquet_datetimes_and_int_strings(tmp_path):
    path = tmp_path / "events.pq"
    pd.DataFrame(
        {
            "user": ["1", "2"],
            "item": [7, 8],
            "time": [pd.Timestamp("1970-01-01 00:00:10"), pd.Timestamp("1970-01-02")],
        }
    ).to_parquet(path)
    raw = read_interactions(path, timestamp_col="time")
    np.testing.assert_array_equal(raw.user, [1, 2])
    assert raw.user.dtype == np.int64
    np.testing.assert_array_equal(raw.timestamp, [10, 86400])


def test_blank_lines_are_skipped(tmp_path):
    path = write(tmp_path / "u.data", "\n1\t2\t3\t4\n\n  \n5\t6\t7\t8\n")
    raw = read_interactions(path)
    np.testing.assert_array_equal(raw.user, [1, 5])


# --------------------------------------------------------------------------- #
# Auto-detection
# --------------------------------------------------------------------------- #


def test_auto_detects_directories(ml100k, ml1m, mlcsv):
    assert read_interactions(ml100k).format == "ml-100k"
    assert read_interactions(ml1m).format == "ml-1m"
    assert read_interactions(mlcsv).format == "ml-csv"


def test_auto_detects_files(ml1m, mlcsv, tmp_path):
    raw = read_interactions(ml1m / "ratings.dat")
    assert raw.format == "ml-1m" and raw.item_info is not None
    raw = read_interactions(mlcsv / "ratings.csv")
    assert raw.format == "ml-csv" and raw.item_info is not None
    renamed = write(
        tmp_path / "small" / "ratings_small.csv", "userId,movieId,rating,timestamp\n1,2,3,4\n"
    )
    assert read_interactions(renamed).format == "ml-csv"
    other = write(tmp_path / "other.csv", "user,item\n1,2\n")
    assert read_interactions(other).format == "generic"


def test_auto_rejects_unknown_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    raises_at(lambda: read_interactions(tmp_path / "empty"), "empty", None)


def test_auto_rejects_non_movielens_ratings_csv(tmp_path):
    write(tmp_path / "ratings.csv", "user,item\n1,2\n")
    message = raises_at(lambda: read_interactions(tmp_path), "ratings.csv", 1)
    assert "generic" in message


def test_auto_rejects_unknown_extension(tmp_path):
    path = write(tmp_path / "x.json", "{}")
    raises_at(lambda: read_interactions(path), "x.json", None)


def test_explicit_format_overrides_detection(tmp_path):
    path = write(tmp_path / "data.tsv", "1\t2\t3\t4\n")
    raw = read_interactions(path, format="ml-100k")
    assert raw.format == "ml-100k" and raw.user.tolist() == [1]


def test_unknown_format_is_value_error(tmp_path):
    with pytest.raises(ValueError, match="ml-100k.*ml-1m.*ml-csv.*generic"):
        read_interactions(tmp_path, format="netflix")


def test_generic_needs_a_file(tmp_path):
    raises_at(lambda: read_interactions(tmp_path, format="generic"), str(tmp_path), None)


def test_options_are_checked(ml100k, tmp_path):
    with pytest.raises(TypeError, match="bogus"):
        read_interactions(ml100k, bogus=1)
    with pytest.raises(TypeError, match="user_col"):
        read_interactions(ml100k, user_col="uid")
    read_interactions(ml100k, user_col="user", sep=None)  # defaults are harmless
    with pytest.raises(ValueError, match="duplicates"):
        read_interactions(ml100k, duplicates="sum")


# --------------------------------------------------------------------------- #
# Malformed input
# --------------------------------------------------------------------------- #


def test_missing_path(tmp_path):
    raises_at(lambda: read_interactions(tmp_path / "nope.csv"), "nope.csv", None)


def test_missing_interactions_file_for_explicit_format(tmp_path):
    message = raises_at(lambda: read_interactions(tmp_path, format="ml-1m"), "ratings.dat", None)
    assert "missing" in message


@pytest.mark.parametrize(
    "name, text, fmt",
    [
        ("u.data", "", "ml-100k"),
        ("u.data", "\n\n", "ml-100k"),
        ("ratings.dat", "", "ml-1m"),
        ("ratings.csv", "userId,movieId,rating,timestamp\n", "ml-csv"),
        ("x.csv", "user,item\n", "generic"),
        ("x.csv", "", "generic"),
    ],
)
def test_empty_files(tmp_path, name, text, fmt):
    path = write(tmp_path / name, text)
    message = raises_at(lambda: read_interactions(path, format=fmt), name, None)
    assert "empty" in message


def test_u_data_with_commas_names_the_separator(tmp_path):
    path = write(tmp_path / "u.data", "1,2,3,4\n5,6,7,8\n")
    message = raises_at(lambda: read_interactions(path), "u.data", 1)
    assert "tab" in message and "comma" in message


@pytest.mark.parametrize(
    "bad_line, expected_line",
    [("5\t6\t7\t8\t9", 3), ("5\t6\t7", 3), ("5\t6\t7\t8\t9\t10\t11", 3)],
)
def test_wrong_field_count(tmp_path, bad_line, expected_line):
    path = write(tmp_path / "u.data", f"1\t2\t3\t4\n\n{bad_line}\n9\t9\t9\t9\n")
    message = raises_at(lambda: read_interactions(path), "u.data", expected_line)
    assert "expected 4" in message


def test_wrong_field_count_in_first_line(tmp_path):
    path = write(tmp_path / "u.data", "1\t2\t3\t4\t5\n1\t2\t3\t4\n")
    raises_at(lambda: read_interactions(path), "u.data", 1)


@pytest.mark.parametrize(
    "text", ["1\t2\t3\t4\t5\t6\n7\t8\t9\t1\t2\t3\n", "1\t2\t3\t4\t\t6\n7\t8\t9\t1\t\t3\n"]
)
def test_surplus_fields_on_every_line(tmp_path, text):
    # pandas would silently make the first field an index; the reader must not
    path = write(tmp_path / "u.data", text)
    message = raises_at(lambda: read_interactions(path), "u.data", 1)
    assert "expected 4" in message and "found 6" in message


def test_csv_with_one_surplus_field_on_every_line(tmp_path):
    path = write(tmp_path / "x.csv", "\nuser,item\n1,2,3\n4,5,6\n")
    message = raises_at(lambda: read_interactions(path), "x.csv", 3)
    assert "expected 2" in message


def test_non_numeric_user_id_ml100k(tmp_path):
    path = write(tmp_path / "u.data", "1\t2\t3\t4\n\nbob\t2\t3\t4\n")
    message = raises_at(lambda: read_interactions(path), "u.data", 3)
    assert "'bob'" in message and "user id" in message


def test_non_numeric_item_id_ml1m(ml1m):
    write(ml1m / "ratings.dat", "1::1193::5::978300760\n1::x661::3::978302109\n")
    message = raises_at(lambda: read_interactions(ml1m), "ratings.dat", 2)
    assert "'x661'" in message


def test_ml1m_wrong_separator(ml1m):
    write(ml1m / "ratings.dat", "1::1193::5::978300760\n1:661:3:978302109\n")
    message = raises_at(lambda: read_interactions(ml1m), "ratings.dat", 2)
    assert "'::'" in message


def test_non_numeric_rating_counts_header_line(mlcsv):
    write(mlcsv / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,1\n1,3,good,2\n")
    message = raises_at(lambda: read_interactions(mlcsv), "ratings.csv", 3)
    assert "'good'" in message and "rating" in message


def test_empty_rating_is_reported(tmp_path):
    path = write(tmp_path / "u.data", "1\t2\t3\t4\n1\t3\t\t4\n")
    message = raises_at(lambda: read_interactions(path), "u.data", 2)
    assert "empty" in message


def test_non_numeric_timestamp_generic(tmp_path):
    path = write(tmp_path / "x.csv", "user,item,ts\na,b,1\na,c,yesterday\n")
    message = raises_at(lambda: read_interactions(path, timestamp_col="ts"), "x.csv", 3)
    assert "'yesterday'" in message


def test_non_numeric_rating_generic(tmp_path):
    path = write(tmp_path / "x.tsv", "user\titem\tr\n1\t2\t3\n\n1\t3\tNA\n")
    message = raises_at(lambda: read_interactions(path, rating_col="r"), "x.tsv", 4)
    assert "'NA'" in message


def test_missing_generic_id(tmp_path):
    path = write(tmp_path / "x.csv", "user,item\n1,2\n,3\n")
    message = raises_at(lambda: read_interactions(path), "x.csv", 3)
    assert "missing column 'user'" in message


def test_missing_columns_ml_csv(tmp_path):
    path = write(tmp_path / "ratings.csv", "userId,movieId,rating\n1,2,3\n")
    message = raises_at(lambda: read_interactions(path), "ratings.csv", 1)
    assert "'timestamp'" in message and "'rating'" in message  # missing one, found list


def test_missing_columns_generic(tmp_path):
    path = write(tmp_path / "x.csv", "uid,iid\n1,2\n")
    message = raises_at(lambda: read_interactions(path), "x.csv", 1)
    assert "'user'" in message and "'item'" in message and "'uid'" in message


def test_missing_columns_parquet(tmp_path):
    path = tmp_path / "x.parquet"
    pd.DataFrame({"uid": [1], "item": [2]}).to_parquet(path)
    message = raises_at(lambda: read_interactions(path), "x.parquet", None)
    assert "'user'" in message and "'uid'" in message


def test_too_many_fields_in_csv(tmp_path):
    path = write(tmp_path / "x.csv", "user,item\n1,2\n3,4,5\n")
    message = raises_at(lambda: read_interactions(path), "x.csv", 3)
    assert "expected 2" in message


def test_unterminated_quote(tmp_path):
    path = write(tmp_path / "x.csv", 'user,item\n1,2\n\n3,"4\n5,6\n')
    message = raises_at(lambda: read_interactions(path), "x.csv", 4)
    assert "quote" in message


def test_not_a_parquet_file(tmp_path):
    path = write(tmp_path / "x.parquet", "user,item\n1,2\n")
    raises_at(lambda: read_interactions(path), "x.parquet", None)


def test_generic_multi_character_separator(tmp_path):
    path = write(tmp_path / "x.txt", "u::i::r\n1::2::3\n1::3::4\n")
    raw = read_interactions(path, sep="::", user_col="u", item_col="i", rating_col="r")
    np.testing.assert_array_equal(raw.item, [2, 3])
    np.testing.assert_array_equal(raw.rating, [3, 4])


def test_undecodable_generic_file(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b"user,item\n1,2\n\xff\xfe,3\n")
    raises_at(lambda: read_interactions(path), "x.csv", 3)


# --------------------------------------------------------------------------- #
# Duplicates
# --------------------------------------------------------------------------- #

DUPLICATED = "1\t2\t3\t100\n1\t3\t4\t101\n\n1\t2\t5\t102\n"


def test_duplicates_error_names_both_lines(tmp_path):
    path = write(tmp_path / "u.data", DUPLICATED)
    message = raises_at(lambda: read_interactions(path), "u.data", 4)
    assert "line 1" in message and "duplicate" in message


def test_duplicates_first_and_last(tmp_path):
    path = write(tmp_path / "u.data", DUPLICATED)
    first = read_interactions(path, duplicates="first")
    np.testing.assert_array_equal(first.item, [2, 3])
    np.testing.assert_array_equal(first.rating, [3, 4])
    last = read_interactions(path, duplicates="last")
    np.testing.assert_array_equal(last.item, [3, 2])
    np.testing.assert_array_equal(last.rating, [4, 5])
    np.testing.assert_array_equal(last.timestamp, [101, 102])


def test_duplicates_error_on_strict_path(tmp_path):
    # The blank-line-free fast path is skipped because of a non-integer-looking field
    path = write(tmp_path / "x.csv", "user,item\n\na,b\nc,d\na,b\n")
    raises_at(lambda: read_interactions(path), "x.csv", 5)


def test_duplicates_generic_string_ids(tmp_path):
    path = write(tmp_path / "x.csv", "user,item,ts\na,b,1\nc,d,2\na,b,3\n")
    message = raises_at(lambda: read_interactions(path), "x.csv", 4)
    assert "line 2" in message
    raw = read_interactions(path, timestamp_col="ts", duplicates="last")
    assert raw.user.tolist() == ["c", "a"]
    np.testing.assert_array_equal(raw.timestamp, [2, 3])


def test_duplicates_parquet_report_rows(tmp_path):
    path = tmp_path / "x.parquet"
    pd.DataFrame({"user": [1, 1], "item": [2, 2]}).to_parquet(path)
    message = raises_at(lambda: read_interactions(path), "x.parquet", None)
    assert "row 2" in message and "row 1" in message
    assert len(read_interactions(path, duplicates="first").user) == 1


# --------------------------------------------------------------------------- #
# Malformed side files
# --------------------------------------------------------------------------- #


def test_u_item_bad_genre_flag(ml100k):
    write(
        ml100k / "u.item",
        f"10|A (1995)|01-Jan-1995||u|{NO_GENRES}\n20|B|||u|{NO_GENRES[:-1]}2\n",
    )
    message = raises_at(lambda: read_interactions(ml100k), "u.item", 2)
    assert "0 or 1" in message


def test_u_item_wrong_field_count(ml100k):
    write(ml100k / "u.item", f"10|A (1995)|01-Jan-1995||u|{NO_GENRES}\n20|B|||u|0|1\n")
    message = raises_at(lambda: read_interactions(ml100k), "u.item", 2)
    assert "expected 24" in message


def test_u_item_bad_date(ml100k):
    write(ml100k / "u.item", f"10|A|1995/01/01||u|{NO_GENRES}\n")
    raises_at(lambda: read_interactions(ml100k), "u.item", 1)


def test_u_item_duplicate_id(ml100k):
    write(ml100k / "u.item", f"10|A|||u|{NO_GENRES}\n10|B|||u|{NO_GENRES}\n")
    message = raises_at(lambda: read_interactions(ml100k), "u.item", 2)
    assert "line 1" in message


def test_u_user_bad_age(ml100k):
    # u.user starts with a blank line, so the bad row is on line 3
    write(ml100k / "u.user", "\n1|24|M|technician|85711\n2|old|F|other|94043\n")
    message = raises_at(lambda: read_interactions(ml100k), "u.user", 3)
    assert "'old'" in message


def test_u_genre_malformed(ml100k):
    write(ml100k / "u.genre", "Drama|0\nComedy\n")
    raises_at(lambda: read_interactions(ml100k), "u.genre", 2)


def test_movies_dat_wrong_field_count(ml1m):
    write(ml1m / "movies.dat", "1193::A (1975)::Drama\n661::B (1996)\n")
    raises_at(lambda: read_interactions(ml1m), "movies.dat", 2)


def test_users_dat_bad_age(ml1m):
    write(ml1m / "users.dat", "1::F::1::10::48067\n2::M::x::16::70072\n")
    raises_at(lambda: read_interactions(ml1m), "users.dat", 2)


def test_movies_csv_bad_id(mlcsv):
    write(mlcsv / "movies.csv", 'movieId,title,genres\n1,"A, The (1995)",Comedy\nfoo,B,Drama\n')
    message = raises_at(lambda: read_interactions(mlcsv), "movies.csv", 3)
    assert "'foo'" in message


def test_movies_csv_missing_column(mlcsv):
    write(mlcsv / "movies.csv", "movieId,name\n1,A\n")
    message = raises_at(lambda: read_interactions(mlcsv), "movies.csv", 1)
    assert "'title'" in message


def test_generic_columns_named_as_users_name_them_are_read_and_said(tmp_path, caplog):
    """A generic file's `timestamp` and `rating` (or `time`/`ts`, `score`) columns are used
    without flags, and the reader says which: the split then follows time, not row order,
    and --min-rating finds the ratings."""
    from fedrec.data import load_dataset, make_split

    rows = [(1, 10, 5, 300), (1, 11, 2, 100), (1, 12, 4, 200), (2, 10, 4, 50), (2, 12, 5, 10), (2, 11, 3, 30)]
    path = tmp_path / "clicks.csv"
    path.write_text("user,item,score,ts\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows))
    with caplog.at_level("WARNING", logger="fedrec.data"):
        ds = load_dataset(str(path))
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "column 'ts' read as the timestamp" in said and "column 'score' read as the rating" in said
    split = make_split(ds)
    item = {raw: j for j, raw in enumerate(ds.item_ids.tolist())}
    user = {raw: j for j, raw in enumerate(ds.user_ids.tolist())}
    assert split.test[user[1]].indices.tolist() == [item[10]]  # the latest in time, not the last row
    assert split.test[user[2]].indices.tolist() == [item[10]]
    assert load_dataset(str(path), min_rating=4).n_interactions == 4
