"""Which PostgreSQL schema changes need the table read again (catalog.reread_reason)."""

from __future__ import annotations

import dataclasses

import pytest

from lakeward.connectors.postgres.catalog import TableShape, reread_reason

INT4, INT8, TEXT, VARCHAR = 23, 20, 25, 1043
BASE = TableShape("public.t", [("id", INT4, -1), ("v", INT4, -1), ("s", VARCHAR, 14)], ["id"], [(100, 100)])


def changed(**kw) -> TableShape:
    return dataclasses.replace(BASE, **kw)


@pytest.mark.parametrize("new, reason", [
    (changed(columns=[*BASE.columns, ("c", INT4, -1)], defaulted=["c"]), "column c added with a default"),
    (changed(columns=[("id", INT4, -1), ("v", INT8, -1), ("s", VARCHAR, 14)], storage=[(100, 101)]), "column v changed type"),
    (changed(columns=[("id", INT4, -1), ("v", INT4, -1), ("s", VARCHAR, 24)]), "column s changed type"),
    (changed(columns=[("id", INT4, -1), ("w", INT4, -1), ("s", VARCHAR, 14)]), "column v renamed or replaced (now w)"),
    (changed(table="public.u"), "renamed to public.u"),
    (changed(pk=[]), "primary key changed from (id) to ()"),
    (changed(storage=[(100, 100), (200, 200)]), "partitions attached or detached"),
    (changed(columns=[*BASE.columns, ("c", INT4, -1)], storage=[(100, 300)]), "rewritten while column c changed"),
])
def test_changes_that_rewrite_existing_rows_need_a_reread(new, reason):
    assert reread_reason(BASE, new) == reason


@pytest.mark.parametrize("new", [
    BASE,
    changed(columns=[*BASE.columns, ("c", TEXT, -1)]),  # nullable, no default
    changed(columns=BASE.columns[:2]),  # dropped column
    changed(defaulted=["v"]),  # SET DEFAULT on an existing column
    changed(storage=[(100, 555)]),  # TRUNCATE, VACUUM FULL: rewritten, same columns
])
def test_changes_that_leave_existing_rows_alone_need_none(new):
    assert reread_reason(BASE, new) is None


def test_shape_round_trips_through_json():
    shape = changed(defaulted=["v"], lsn=12345)
    assert TableShape.from_json(shape.to_json()) == shape
