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


def test_usual_names_only_at_top_or_under_inbox():
    assert special_use(Folder(("INBOX", "Sent"))) == "\\Sent"
    assert special_use(Folder(("Projects", "Sent"))) is None


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
