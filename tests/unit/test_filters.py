from datetime import UTC, datetime, timedelta

import pytest

from migrator.filters import MessageFilter, parse_age, parse_date, parse_size
from migrator.model import MessageRef


@pytest.mark.parametrize(
    "text, value",
    [
        ("1000", 1000),
        ("25M", 25 * 2**20),
        ("25MB", 25 * 2**20),
        ("1.5G", int(1.5 * 2**30)),
        ("512k", 512 * 1024),
        ("2 MiB", 2 * 2**20),
    ],
)
def test_sizes(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize(
    "text, days", [("90d", 90), ("2w", 14), ("6m", 180), ("1y", 365), ("36h", 1.5)]
)
def test_ages(text, days):
    assert parse_age(text) == timedelta(days=days)


def test_dates():
    assert parse_date("2023-01-31") == datetime(2023, 1, 31, tzinfo=UTC)
    assert parse_date("2023-01-31T10:00:00+02:00").utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize("bad", ["25X", "", "-1"])
def test_bad_sizes(bad):
    with pytest.raises(ValueError, match="not a size"):
        parse_size(bad)


def test_bad_date_and_age():
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_date("31/01/2023")
    with pytest.raises(ValueError, match="90d"):
        parse_age("ninety days")


def ref(size=10, date=datetime(2020, 6, 1, tzinfo=UTC)):
    return MessageRef("1", size, date=date)


def test_filter_bounds_are_inclusive_since_exclusive_before():
    f = MessageFilter(
        since=datetime(2020, 6, 1, tzinfo=UTC), before=datetime(2020, 7, 1, tzinfo=UTC)
    )
    assert f.include(ref())
    assert not f.include(ref(date=datetime(2020, 7, 1, tzinfo=UTC)))
    assert not f.include(ref(date=datetime(2020, 5, 31, 23, 59, tzinfo=UTC)))


def test_filter_leaves_out_undated_messages_when_dates_matter():
    assert MessageFilter().include(ref(date=None))
    assert not MessageFilter(before=datetime(2030, 1, 1, tzinfo=UTC)).include(ref(date=None))


def test_max_size():
    assert MessageFilter(max_size=10).include(ref(size=10))
    assert not MessageFilter(max_size=10).include(ref(size=11))
