"""Where-clauses: parsing, typing and masks, checked against hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.search.filters import FilterError, MetadataColumns, parse_clause, parse_where


def columns() -> MetadataColumns:
    cols = MetadataColumns()
    cols.set(0, {"colour": "Red", "price": "10", "type": "Shirts"})
    cols.set(1, {"colour": "navy blue", "price": 55.5, "type": "Shirts"})
    cols.set(2, {"colour": "Red", "price": "n/a", "type": "Dresses"})
    cols.set(5, {"colour": "Green", "type": "Dresses"})
    return cols


def matches(cols, *where):
    return np.flatnonzero(cols.mask(parse_where(list(where)))).tolist()


def test_parse():
    assert parse_clause("price <= 49.9").op == "<="
    assert parse_clause("colour=Red|Navy Blue").values == ("Red", "Navy Blue")
    assert parse_clause("article type != Shirts").column == "article type"
    for bad in ("price", "=Red", "price<", "price<cheap", ""):
        with pytest.raises(FilterError):
            parse_clause(bad)


def test_text_equality_ignores_case_and_takes_alternatives():
    cols = columns()
    assert matches(cols, "colour=red") == [0, 2]
    assert matches(cols, "colour=Red|Navy Blue") == [0, 1, 2]
    assert matches(cols, "colour!=Red") == [1, 5]


def test_numeric_comparisons_skip_non_numbers():
    cols = columns()
    assert matches(cols, "price<50") == [0]
    assert matches(cols, "price>=10") == [0, 1]
    assert matches(cols, "price=55.5") == [1]


def test_clauses_are_anded():
    assert matches(columns(), "type=Shirts", "price>20") == [1]


def test_updates_and_removals_are_seen():
    cols = columns()
    cols.set(0, {"colour": "Blue"})
    assert matches(cols, "colour=Red") == [2]
    assert matches(cols, "price<50") == []
    cols.remove(2)
    assert matches(cols, "colour=Red") == []


def test_errors_name_the_problem():
    cols = columns()
    with pytest.raises(FilterError, match="unknown filter column 'size'.*colour, price, type"):
        cols.mask(parse_where(["size=M"]))
    with pytest.raises(FilterError, match="no numeric values"):
        cols.mask(parse_where(["colour<3"]))


def test_facet_counts():
    assert columns().facet_counts("colour") == [("Red", 2), ("navy blue", 1), ("Green", 1)]


def test_columns_snapshot_round_trips(tmp_path):
    cols = columns()
    cols.remove(2)
    cols.save(tmp_path, generation=9, model="m@1")
    restored = MetadataColumns.restore(tmp_path, "m@1", cols.max_columns)
    assert restored is not None and restored[1] == 9
    again = restored[0]
    for where in (["colour=red"], ["price<50"], ["colour!=navy"], ["type=dresses", "price>=10"]):
        assert matches(again, *where) == matches(cols, *where)
    again.set(7, {"colour": "RED", "price": 1})  # the vocabulary came back: same spelling, same code
    assert 7 in matches(again, "colour=red")
    assert MetadataColumns.restore(tmp_path, "other@1", cols.max_columns) is None
    assert MetadataColumns.restore(tmp_path, "m@1", cols.max_columns + 1) is None


@pytest.mark.parametrize("tamper", ["labels", "codes", "data", "json"])
def test_a_tampered_columns_snapshot_is_refused(tmp_path, tamper):
    import json

    cols = columns()
    cols.save(tmp_path, generation=3, model="m")
    info_path = tmp_path / "columns.json"
    info = json.loads(info_path.read_text())
    if tamper == "labels":
        info["labels"][0] = [{"not": "a string"}]
    elif tamper == "codes":
        arrays = dict(np.load(tmp_path / info["data"]))
        arrays["codes0"] = arrays["codes0"] + 1000
        np.savez(tmp_path / info["data"], **arrays)
    elif tamper == "data":
        info["data"] = "/etc/passwd"
    info_path.write_text("{oops" if tamper == "json" else json.dumps(info))
    assert MetadataColumns.restore(tmp_path, "m", cols.max_columns) is None
