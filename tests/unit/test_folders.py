import pytest
from hypothesis import given
from hypothesis import strategies as st

from migrator.errors import ConfigError
from migrator.folders import FolderMap, special_use
from migrator.model import Folder


def names(plans):
    return {p.source_name: p.target_name for p in plans}


def folders(*paths, **uses):
    return [
        Folder(tuple(p.split("/")), uses.get(p.replace("/", "_").replace(" ", "_"))) for p in paths
    ]


def test_hierarchy_is_kept_and_inbox_stays_inbox():
    plans = FolderMap().plan(folders("INBOX", "Archive", "Archive/2023", "Переписка/Ünï"), [], ".")
    assert [p.target for p in plans] == [
        ("INBOX",),
        ("Archive",),
        ("Archive", "2023"),
        ("Переписка", "Ünï"),
    ]


def test_level_holding_target_delimiter_is_renamed_and_reported():
    [plan] = FolderMap().plan(folders("Projects/v1.2"), [], ".")
    assert plan.target == ("Projects", "v1_2")
    assert "renamed" in plan.note


def test_renames_never_merge_two_folders():
    plans = FolderMap().plan(folders("a.b", "a_b"), [], ".")
    assert len({p.target for p in plans}) == 2


def test_special_use_by_flag_and_by_usual_name():
    src = [Folder(("Sent Items",)), Folder(("[Gmail]", "Sent Mail"), "\\Sent"), Folder(("Spam",))]
    dst = [Folder(("Gesendet",), "\\Sent"), Folder(("Junk",))]
    assert names(FolderMap().plan(src, dst, ".")) == {
        "Sent Items": "Gesendet",
        "[Gmail]/Sent Mail": "Gesendet",
        "Spam": "Junk",
    }


def test_special_use_without_a_target_folder_gets_the_canonical_name():
    assert names(FolderMap().plan([Folder(("Deleted Items",))], [], "/")) == {
        "Deleted Items": "Trash"
    }


def test_usual_names_only_at_the_personal_namespace_top():
    """A server's INBOX.Sent under prefix INBOX. reaches here as ("Sent",) (the store strips
    the prefix); a folder of the inbox named like one, or another user's, is no special folder."""
    assert special_use(Folder(("Sent",))) == "\\Sent"
    assert special_use(Folder(("INBOX", "Sent"))) is None
    assert special_use(Folder(("Projects", "Sent"))) is None
    assert special_use(Folder(("Other Users", "bob", "Sent"), namespace="other")) is None
    assert special_use(Folder(("Shared Folders", "Trash"), "\\Trash", namespace="shared")) is None


def test_inbox_archive_is_never_taken_for_the_archive():
    """The issue's case: an mbox tree with Archive.mbox and INBOX/Archive/2023.mbox; a rerun
    copied Archive's messages into INBOX/Archive when the LIST order put it first."""
    src = [Folder(("Archive",)), Folder(("INBOX", "Archive")), Folder(("INBOX", "Archive", "2023"))]
    dst = [Folder(("INBOX", "Archive")), Folder(("INBOX", "Archive", "2023")), Folder(("Archive",))]
    for target in (dst, dst[::-1]):
        assert names(FolderMap().plan(src, target, "/")) == {
            "Archive": "Archive",
            "INBOX/Archive": "INBOX/Archive",
            "INBOX/Archive/2023": "INBOX/Archive/2023",
        }


@given(
    st.permutations(
        [
            Folder(("Papierkorb",)),
            Folder(("Trash",)),
            Folder(("Deleted Items",), "\\Trash"),
            Folder(("Bin",)),
        ]
    )
)
def test_target_special_use_folder_is_the_same_whatever_the_listing_order(target):
    """A flagged folder wins over a named one; among named ones, the first by name."""
    [plan] = FolderMap().plan([Folder(("Trash",))], target, "/")
    assert plan.target == ("Deleted Items",)
    [plan] = FolderMap().plan([Folder(("Trash",))], [f for f in target if not f.special_use], "/")
    assert plan.target == ("Bin",)


def test_plan_carries_the_special_use_for_the_target_to_create():
    plans = FolderMap().plan(
        [Folder(("Sent Items",)), Folder(("Trash",)), Folder(("Lists",))], [], "."
    )
    assert {p.target_name: p.special_use for p in plans} == {
        "Sent": "\\Sent",
        "Trash": "\\Trash",
        "Lists": None,
    }


def test_other_namespaces_are_left_out_unless_asked_and_reported():
    src = [
        Folder(("INBOX",)),
        Folder(("Shared Folders", "team", "ro"), namespace="shared"),
        Folder(("Other Users", "bob", "Sent"), namespace="other"),
    ]
    fm = FolderMap()
    assert names(fm.plan(src, [], ".")) == {"INBOX": "INBOX"}
    assert [f.path for f in fm.left_out(src)] == [src[1].path, src[2].path]
    fm = FolderMap(include_shared=True)
    assert names(fm.plan(src, [], ".")) == {
        "INBOX": "INBOX",
        "Shared Folders/team/ro": "Shared Folders/team/ro",
        "Other Users/bob/Sent": "Other Users/bob/Sent",
    }
    assert fm.left_out(src) == []


def test_include_exclude_globs():
    fm = FolderMap(include=["Archive*", "inbox"], exclude=["Archive/2019"])
    plans = fm.plan(folders("INBOX", "Archive", "Archive/2019", "Archive/2020", "Lists"), [], "/")
    assert sorted(names(plans)) == ["Archive", "Archive/2020", "INBOX"]


def test_map_renames_a_subtree_and_into_prefixes_everything():
    fm = FolderMap(renames={"Old": "New/Place"})
    assert names(fm.plan(folders("Old", "Old/x", "Other"), [], ".")) == {
        "Old": "New/Place",
        "Old/x": "New/Place/x",
        "Other": "Other",
    }
    fm = FolderMap(into="Imported/2024")
    assert names(fm.plan(folders("INBOX", "Sent"), [], ".")) == {
        "INBOX": "Imported/2024/INBOX",
        "Sent": "Imported/2024/Sent",
    }


def test_to_folder_applies_to_one_folder_sources_only():
    fm = FolderMap(to_folder="Imported/POP")
    assert names(fm.plan(folders("INBOX"), [], ".")) == {"INBOX": "Imported/POP"}
    assert names(fm.plan(folders("INBOX", "Sent"), [], "."))["INBOX"] == "INBOX"


def test_noselect_folders_are_not_copied():
    plans = FolderMap().plan(
        [Folder(("Parent",), selectable=False), Folder(("Parent", "c"))], [], "."
    )
    assert [p.source_name for p in plans] == ["Parent/c"]


def test_bad_folder_option_is_a_config_error():
    with pytest.raises(ConfigError):
        FolderMap(renames={"a//b": "c"})


level = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=8)


@given(
    st.lists(st.lists(level, min_size=1, max_size=4).map(tuple), max_size=12, unique=True),
    st.sampled_from([".", "/", None]),
)
def test_targets_are_safe_and_distinct_for_any_names(paths, delimiter):
    src = [Folder(p) for p in paths if p != ("INBOX",) and p[0].upper() != "INBOX"]
    plans = FolderMap(renames={}).plan(src, [], delimiter)
    plain = [p for p in plans if not (p.note or "").startswith("special-use")]
    if delimiter:
        assert all(delimiter not in level for p in plans for level in p.target)
    assert len({p.target for p in plain}) == len(plain)
