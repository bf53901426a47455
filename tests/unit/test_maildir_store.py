"""MaildirStore: Dovecot's Maildir++ layout, tmp/ then cur/, flags, keywords, stray files."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from migrator.errors import ConfigError, FolderError, MessageError
from migrator.model import INBOX, Folder, MessageRef, crlf_size, message_key
from migrator.stores import maildir as maildir_module
from migrator.stores.localfiles import header_block, to_lf
from migrator.stores.maildir import VALIDITY, MaildirStore, info_flags, split_name
from tests.unit.archive_helpers import (
    SIMPLE,
    any_bytes,
    copied_flags,
    crlf,
    dates,
    flag_sets,
    mode,
    ref_for,
    scratch_dir,
)

ARCHIVE = ("Archive", "2023")
WHEN = datetime(2023, 5, 6, 7, 8, 9, tzinfo=timezone(timedelta(hours=2)))


def store_at(path: Path, **kwargs: Any) -> MaildirStore:
    store = MaildirStore(path, **kwargs)
    store.connect()
    return store


def read_all(store: MaildirStore, folder: tuple[str, ...]) -> list[tuple[MessageRef, Any]]:
    store.open_folder(folder)
    return list(store.fetch(folder, list(store.list_messages(folder))))


def files(folder: Path, sub: str) -> list[str]:
    return sorted(os.listdir(folder / sub))


# -- round trips --------------------------------------------------------------------------------


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(any_bytes, flag_sets, dates(1971, 2100)), min_size=1, max_size=6))
def test_append_then_read_round_trip(batch: list[tuple[bytes, frozenset[str], datetime]]) -> None:
    # A Maildir folder holds 26 keywords (letters a-z); the 27th is refused by design (below).
    assume(len({k for _, f, _ in batch for k in f if not k.startswith("\\")}) <= 26)
    with scratch_dir() as tmp:
        store = store_at(Path(tmp) / "Maildir")
        store.ensure_folder(ARCHIVE)
        items = [(ref_for(m, f, d, str(i)), m) for i, (m, f, d) in enumerate(batch)]
        results = store.append(ARCHIVE, items)
        assert all(r.ok for r in results)
        got = {ref.id: (ref, data) for ref, data in read_all(store, ARCHIVE)}
        assert len(got) == len(batch)
        for result, (message, flags, when) in zip(results, batch, strict=True):
            ref, data = got[result.target_id]  # type: ignore[index]
            assert data == to_lf(message)
            assert ref.flags == copied_flags(flags)
            assert ref.date == when
            assert ref.size == crlf_size(data)
            assert ref.key == message_key(header_block(data), crlf_size(data))


def test_layout_names_and_modes_as_dovecot_writes_them(tmp_path: Path) -> None:
    os.umask(0)
    try:
        store = store_at(tmp_path / "Maildir")
        store.ensure_folder(INBOX)
        store.ensure_folder(("Entwürfe", "a&b"))
        [result] = store.append(
            INBOX, [(ref_for(SIMPLE, {"\\Seen", "\\Answered", "\\Deleted", "$x"}, WHEN), SIMPLE)]
        )
    finally:
        os.umask(0o022)
    root = tmp_path / "Maildir"
    folder = root / ".Entw&APw-rfe.a&-b"
    assert sorted(os.listdir(root)) == [
        ".Entw&APw-rfe.a&-b",
        "cur",
        "dovecot-keywords",
        "new",
        "tmp",
    ]
    assert sorted(os.listdir(folder)) == ["cur", "maildirfolder", "new", "tmp"]
    for directory in (root, root / "cur", root / "tmp", folder, folder / "cur"):
        assert mode(directory) == 0o700
    [name] = files(root, "cur")
    assert mode(root / "cur" / name) == mode(root / "dovecot-keywords") == 0o600
    assert files(root, "tmp") == [] and files(root, "new") == []
    base, info = split_name(name)
    assert base == result.target_id
    size = len(to_lf(SIMPLE))
    assert base.endswith(f",S={size},W={crlf_size(to_lf(SIMPLE))}")
    assert info == "RSa"  # \Deleted (T) is never written; letters in ASCII order
    assert (root / "dovecot-keywords").read_text() == "0 $x\n"
    assert (root / "cur" / name).stat().st_mtime == WHEN.timestamp()
    assert (root / "cur" / name).read_bytes() == to_lf(SIMPLE)
    assert store.list_folders() == [
        Folder(("Entwürfe",), None, False),
        Folder(("Entwürfe", "a&b"), None, True),
        Folder(INBOX, None, True),
    ]


@pytest.mark.parametrize("level", ["a.b", "", "x/y"])
def test_levels_maildir_cannot_hold(tmp_path: Path, level: str) -> None:
    store = store_at(tmp_path)
    assert store.delimiter == "."
    with pytest.raises(FolderError, match="cannot be stored"):
        store.ensure_folder(("Top", level))


def test_special_use_by_name_and_noselect_parents(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    for folder in (("Sent",), ("Trash",), ("INBOX", "Drafts"), ("Lists", "python")):
        store.ensure_folder(folder)
    assert store.list_folders() == [
        Folder(INBOX, None, True),
        # a folder of the inbox named like one is no special folder (issue 18)
        Folder(("INBOX", "Drafts"), None, True),
        Folder(("Lists",), None, False),
        Folder(("Lists", "python"), None, True),
        Folder(("Sent",), "\\Sent", True),
        Folder(("Trash",), "\\Trash", True),
    ]
    assert (tmp_path / ".INBOX.Drafts" / "cur").is_dir()


# -- keywords -----------------------------------------------------------------------------------


def test_existing_keyword_letters_are_kept_and_new_ones_added(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    store.ensure_folder(INBOX)
    (tmp_path / "dovecot-keywords").write_text("0 $Junk\n2 old\n")
    store.append(INBOX, [(ref_for(SIMPLE, {"old", "new", "$Junk"}, WHEN), SIMPLE)])
    assert (tmp_path / "dovecot-keywords").read_text() == "0 $Junk\n1 new\n2 old\n"
    [name] = files(tmp_path, "cur")
    assert split_name(name)[1] == "abc"
    [(ref, _)] = read_all(store, INBOX)
    assert ref.flags == {"old", "new", "$Junk"}


def test_a_27th_keyword_is_refused_not_dropped(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    many = {f"k{i:02d}" for i in range(26)}
    other = crlf("Subject: other", "", "x")
    results = store.append(
        INBOX,
        [(ref_for(SIMPLE, many, WHEN), SIMPLE), (ref_for(other, {"one-more"}, WHEN), other)],
    )
    assert results[0].ok
    assert not results[1].ok and "26 keywords" in (results[1].error or "")
    assert len(files(tmp_path, "cur")) == 1


def test_keyword_letters_without_mapping_are_ignored() -> None:
    assert info_flags("FSab", {"a": "known"}) == {"\\Flagged", "\\Seen", "known"}
    assert info_flags("T", {}) == {"\\Deleted"}


# -- reading what others wrote ------------------------------------------------------------------


def _deliver(folder: Path, sub: str, name: str, data: bytes) -> Path:
    for part in ("cur", "new", "tmp"):
        (folder / part).mkdir(parents=True, exist_ok=True)
    path = folder / sub / name
    path.write_bytes(data)
    return path


def test_foreign_maildir_with_stray_files(tmp_path: Path) -> None:
    _deliver(tmp_path, "new", "1700000000.12345_1.host", b"Subject: new one\n\nhi\n")
    _deliver(tmp_path, "cur", "1700000001.M1P2.host,S=99:2,S", b"Subject: seen\n\nhi\n")
    _deliver(tmp_path, "cur", "1700000002.offlineimap_3.host,U=4,FMD5=ab:2,FR", b"From: x\n\n")
    _deliver(tmp_path, "cur", ".DS_Store", b"\x00\x01")
    _deliver(tmp_path, "cur", "README", b"This directory holds mail.\n")
    _deliver(tmp_path, "tmp", "1700000003.half.host", b"Subject: half written")
    (tmp_path / "cur" / "subdir").mkdir()
    for stray in ("dovecot-uidlist", "dovecot.index", "courierimapkeywords", "subscriptions"):
        (tmp_path / stray).write_text("junk\n")
    (tmp_path / ".Junk").mkdir()  # a folder directory without cur/ is not a folder
    store = store_at(tmp_path, create=False)
    assert store.list_folders() == [Folder(INBOX, None, True)]
    assert store.open_folder(INBOX) == maildir_module.FolderState(VALIDITY, 4)
    got = read_all(store, INBOX)
    by_id = {ref.id: (ref, data) for ref, data in got}
    assert by_id["1700000000.12345_1.host"][1] == b"Subject: new one\n\nhi\n"
    assert by_id["1700000000.12345_1.host"][0].flags == frozenset()
    assert by_id["1700000001.M1P2.host,S=99"][0].flags == {"\\Seen"}
    assert by_id["1700000002.offlineimap_3.host,U=4,FMD5=ab"][0].flags == {
        "\\Flagged",
        "\\Answered",
    }
    readme = by_id["README"][1]
    assert isinstance(readme, MessageError) and "does not look like a message" in str(readme)
    assert (tmp_path / "cur" / "README").exists()


def test_ids_survive_flag_changes_and_moves(tmp_path: Path) -> None:
    new = _deliver(tmp_path, "new", "1700000000.1.host", b"Subject: a\n\nx\n")
    store = store_at(tmp_path)
    store.open_folder(INBOX)
    refs = list(store.list_messages(INBOX))
    new.rename(tmp_path / "cur" / "1700000000.1.host:2,S")  # a mail client read it meanwhile
    assert [d for _, d in store.fetch(INBOX, refs)] == [b"Subject: a\n\nx\n"]
    [(ref, _)] = read_all(store, INBOX)
    assert ref.id == refs[0].id and ref.flags == {"\\Seen"}
    assert list(store.list_messages(INBOX, skip={ref.id})) == []
    (tmp_path / "cur" / "1700000000.1.host:2,S").unlink()
    [(_, gone)] = list(store.fetch(INBOX, refs))
    assert isinstance(gone, MessageError)


def test_unreadable_message_is_a_message_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _deliver(tmp_path, "cur", "1700000000.1.host:2,", b"Subject: a\n\nx\n")
    store = store_at(tmp_path)
    real_open = open

    def deny(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file).endswith("host:2,"):
            raise PermissionError(13, "Permission denied")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", deny)
    monkeypatch.setattr(Path, "read_bytes", lambda self: deny(self).read())
    [(ref, data)] = read_all(store, INBOX)
    assert isinstance(data, MessageError) and "Permission denied" in str(data)
    assert ref.extra["error"]


def test_missing_source_folder_and_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such directory"):
        store_at(tmp_path / "missing", create=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        store_at(tmp_path / "file")
    with pytest.raises(FolderError, match="does not exist"):
        store_at(tmp_path).open_folder(("Nope",))
    assert store_at(tmp_path / "new").list_folders() == []
    assert list(store_at(tmp_path).index(("Nope",))) == []


# -- target details -----------------------------------------------------------------------------


def test_index_and_delete(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    refs = [ref_for(crlf(f"Message-ID: <{i}@x>", "", "b"), date=WHEN) for i in range(3)]
    results = store.append(
        INBOX, [(r, crlf(f"Message-ID: <{i}@x>", "", "b")) for i, r in enumerate(refs)]
    )
    assert sorted(store.index(INBOX)) == sorted(r.key for r in refs)
    store.delete(INBOX, [results[0].target_id, "not-there"])  # type: ignore[list-item]
    assert len(files(tmp_path, "cur")) == 2
    assert store.can_delete


def test_message_without_date_takes_its_headers_date(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    message = crlf("Date: Mon, 01 Jan 2024 00:00:00 +0000", "", "x")
    store.append(INBOX, [(ref_for(message), message)])
    [(ref, _)] = read_all(store, INBOX)
    assert ref.date == datetime(2024, 1, 1, tzinfo=UTC)


def test_message_without_date_takes_its_topmost_received_date(tmp_path: Path) -> None:
    """The one stand-in INTERNALDATE rule (migrator.headers): the topmost Received header,
    not the latest date among them."""
    store = store_at(tmp_path)
    message = crlf(
        "Received: by mx; Tue, 02 Jan 2024 10:00:00 +0000",
        "Received: by relay-with-a-wrong-clock; Fri, 01 Jan 2038 00:00:00 +0000",
        "Date: Mon, 01 Jan 2024 00:00:00 +0000",
        "",
        "x",
    )
    store.append(INBOX, [(ref_for(message), message)])
    [(ref, _)] = read_all(store, INBOX)
    assert ref.date == datetime(2024, 1, 2, 10, tzinfo=UTC)


def test_recover_removes_only_our_dead_tmp_files(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    store.ensure_folder(INBOX)
    host = maildir_module.hostname_for_filename()
    dead = tmp_path / "tmp" / f"1700000000.M1P999999999Q1.{host},S=5,W=6"
    mine = tmp_path / "tmp" / f"1700000000.M1P{os.getpid()}Q1.{host},S=5,W=6"
    foreign = tmp_path / "tmp" / "1700000000.12345_1.otherhost"
    for file in (dead, mine, foreign):
        file.write_bytes(b"x")
    store.recover(INBOX, None)
    assert not dead.exists() and mine.exists() and foreign.exists()
