from hypothesis import given
from hypothesis import strategies as st

from migrator.model import MessageRef
from migrator.stores.imap import batches_by_size, expand_uid_set, parse_appenduid, uid_set


def test_appenduid_single_and_ranges():
    assert parse_appenduid(b"[APPENDUID 38505 3955] APPEND completed") == (38505, [3955])
    assert parse_appenduid(b"[APPENDUID 1700000000 5:7,9] Append completed.") == (
        1700000000,
        [5, 6, 7, 9],
    )
    assert parse_appenduid(b"APPEND completed") is None


def test_uid_set_is_compact():
    assert uid_set([5, 1, 2, 3, 9, 10, 12]) == "1:3,5,9:10,12"


@given(st.sets(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=200))
def test_uid_set_round_trips(uids):
    assert expand_uid_set(uid_set(uids)) == sorted(uids)


@given(st.lists(st.integers(min_value=0, max_value=5000), max_size=60))
def test_batches_bounded_by_bytes_and_count_keep_order(sizes):
    refs = [MessageRef(str(i), s) for i, s in enumerate(sizes)]
    batches = list(batches_by_size(refs, 10_000, 7))
    assert [r for b in batches for r in b] == refs
    for batch in batches:
        assert len(batch) <= 7
        assert len(batch) == 1 or sum(r.size for r in batch) <= 10_000
