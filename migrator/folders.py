"""Which source folders are copied, and what each is called in the target.

Pure logic over folder lists: the engine hands in both sides' folders and the target's delimiter,
and gets back one FolderPlan per selected source folder. Names are compared and shown with '/'
between levels, whatever the servers use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase

from migrator.errors import ConfigError
from migrator.model import INBOX, Folder, FolderPath, display_name, parse_display_name

#: Usual names of special-use folders on servers that do not flag them (RFC 6154 section 2),
#: compared case-insensitively with the folder's last level when it sits at the top or under INBOX.
USUAL_NAMES: dict[str, tuple[str, ...]] = {
    "\\Sent": (
        "sent",
        "sent items",
        "sent messages",
        "sent mail",
        "sent-mail",
        "gesendet",
        "gesendete elemente",
        "envoyés",
        "éléments envoyés",
        "enviados",
        "inviata",
        "posta inviata",
        "verzonden items",
        "отправленные",
    ),
    "\\Drafts": ("drafts", "draft", "entwürfe", "brouillons", "borradores", "bozze", "черновики"),
    "\\Trash": (
        "trash",
        "deleted items",
        "deleted messages",
        "bin",
        "papierkorb",
        "gelöschte elemente",
        "corbeille",
        "papelera",
        "cestino",
        "корзина",
    ),
    "\\Junk": ("junk", "spam", "junk e-mail", "junk email", "bulk mail", "spamverdacht", "спам"),
    "\\Archive": ("archive", "archives", "archiv", "архив"),
}

#: The name a special-use folder gets in a target that has none for that use.
CANONICAL_NAMES = {
    "\\Sent": "Sent",
    "\\Drafts": "Drafts",
    "\\Trash": "Trash",
    "\\Junk": "Junk",
    "\\Archive": "Archive",
}

#: What replaces a target delimiter found inside a level name.
DELIMITER_SUBSTITUTE = "_"


def special_use(folder: Folder) -> str | None:
    """The folder's RFC 6154 use: its flag, or failing that its usual name at the top level of
    the personal namespace (a server's ``INBOX.Sent`` under prefix ``INBOX.`` is ``Sent`` here;
    ``Projects/Sent`` or another user's ``Sent`` is no special folder)."""
    if folder.namespace is not None:
        return None
    if folder.special_use:
        return folder.special_use
    path = folder.path
    if len(path) == 1:
        name = path[-1].strip().lower()
        for use, names in USUAL_NAMES.items():
            if name in names:
                return use
    if len(path) == 2 and path[0].lower() in ("[gmail]", "[google mail]"):
        name = path[1].lower()
        for use, gname in (
            ("\\Sent", "sent mail"),
            ("\\Drafts", "drafts"),
            ("\\Trash", "trash"),
            ("\\Junk", "spam"),
        ):
            if name == gname:
                return use
    return None


def folders_by_use(folders: Sequence[Folder]) -> dict[str, Folder]:
    """One folder per special use, whatever order the server listed them in: a folder the
    server flags wins over one known by its name, then the shallower, then the first by name."""
    by_use: dict[str, Folder] = {}
    ranked = sorted(
        (f for f in folders if f.selectable),
        key=lambda f: (f.special_use is None, len(f.path), f.path),
    )
    for folder in ranked:
        use = special_use(folder)
        if use and use not in by_use:
            by_use[use] = folder
    return by_use


@dataclass(frozen=True)
class FolderPlan:
    source: Folder
    target: FolderPath
    #: Why the target name differs from the source's, for the report; None when it does not.
    note: str | None = None
    #: The RFC 6154 use of the target folder, when it is one: a target that creates it gives it
    #: that attribute (RFC 6154 CREATE-SPECIAL-USE).
    special_use: str | None = None

    @property
    def source_name(self) -> str:
        return display_name(self.source.path)

    @property
    def target_name(self) -> str:
        return display_name(self.target)


@dataclass
class FolderMap:
    """The user's selection and renaming rules (--folder, --exclude, --map, --into, --to-folder)."""

    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    renames: Mapping[str, str] = field(default_factory=dict)
    into: str | None = None
    #: Where the only folder of a one-folder source (POP3, a single mbox file) lands.
    to_folder: str | None = None
    #: Copy other users' and shared folders too (--include-shared), under a target folder named
    #: after their namespace (NAMESPACE_FOLDERS).
    include_shared: bool = False

    def __post_init__(self) -> None:
        try:
            self._renames = {
                parse_display_name(src): parse_display_name(dst)
                for src, dst in self.renames.items()
            }
            self._into = parse_display_name(self.into) if self.into else None
            self._to_folder = parse_display_name(self.to_folder) if self.to_folder else None
        except ValueError as exc:
            raise ConfigError(f"folder option: {exc}") from None

    def selected(self, folder: Folder) -> bool:
        name = display_name(folder.path)
        if self.include and not any(_match(pattern, name) for pattern in self.include):
            return False
        return not any(_match(pattern, name) for pattern in self.exclude)

    def plan(
        self,
        source_folders: Sequence[Folder],
        target_folders: Sequence[Folder],
        target_delimiter: str | None,
    ) -> list[FolderPlan]:
        chosen = [
            f
            for f in source_folders
            if f.selectable and self.selected(f) and (f.namespace is None or self.include_shared)
        ]
        target_by_use = {use: f.path for use, f in folders_by_use(target_folders).items()}
        one_folder_source = len([f for f in source_folders if f.selectable]) == 1
        ordered = sorted(chosen, key=lambda f: (f.path != INBOX, f.path))
        wanted = [(f, *self._target_for(f, target_by_use, one_folder_source)) for f in ordered]
        # Names that need no rename are reserved first: a renamed folder never merges into them.
        taken: dict[FolderPath, FolderPath] = {}
        for folder, target, _ in wanted:
            if _safe_levels(target, target_delimiter)[1] is False:
                taken.setdefault(target, folder.path)
        plans: list[FolderPlan] = []
        for folder, target, note in wanted:
            use = special_use(folder) if (note or "").startswith("special-use") else None
            if note is None and special_use(folder) and target == folder.path:
                use = special_use(folder)
            safe, renamed = _safe_levels(target, target_delimiter)
            if renamed:
                note = (
                    f"renamed: a level held the target's delimiter {target_delimiter!r}, "
                    f"replaced by {DELIMITER_SUBSTITUTE!r}"
                )
                base, n = safe, 2
                while safe in taken and taken[safe] != folder.path:
                    safe = (*base[:-1], f"{base[-1]} ({n})")
                    n += 1
                taken[safe] = folder.path
            plans.append(FolderPlan(folder, safe, note, use))
        return plans

    def left_out(self, source_folders: Sequence[Folder]) -> list[Folder]:
        """The selectable folders of other users' and shared namespaces that the plan leaves
        out (without --include-shared), for the report."""
        if self.include_shared:
            return []
        return [
            f
            for f in source_folders
            if f.namespace is not None and f.selectable and self.selected(f)
        ]

    def _target_for(
        self, folder: Folder, target_by_use: dict[str, FolderPath], one_folder_source: bool
    ) -> tuple[FolderPath, str | None]:
        path = folder.path
        for depth in range(len(path), 0, -1):
            if path[:depth] in self._renames:
                return (*self._renames[path[:depth]], *path[depth:]), "--map"
        if one_folder_source and self._to_folder:
            return self._to_folder, "--to-folder"
        if self._into:
            return (*self._into, *path), "--into"
        use = special_use(folder)
        if use:
            target = target_by_use.get(use) or (CANONICAL_NAMES[use],)
            if target != path:
                return target, f"special-use {use}"
        return path, None


def _match(pattern: str, name: str) -> bool:
    """Shell-style, case-sensitive, '*' crossing levels; INBOX matches in any case."""
    if pattern[:5].upper() == "INBOX":
        pattern = "INBOX" + pattern[5:]
    return fnmatchcase(name, pattern)


def _safe_levels(path: FolderPath, delimiter: str | None) -> tuple[FolderPath, bool]:
    if not delimiter:
        return path, False
    safe = tuple(level.replace(delimiter, DELIMITER_SUBSTITUTE) for level in path)
    return safe, safe != path


#: FolderPlan notes of a target folder the user chose (a new choice replaces the recorded one).
USER_MAPPINGS = ("--map", "--into", "--to-folder")


def keep_recorded(
    plans: Sequence[FolderPlan], recorded: Mapping[FolderPath, FolderPath]
) -> tuple[list[FolderPlan], list[tuple[FolderPath, FolderPath]]]:
    """Plans with each source folder going where it went on the first pass (``recorded``, from
    the journal): a special-use folder that appeared in the target since, or a child folder named
    like one, never sends the same messages to a second folder. Only the user's own --map,
    --into or --to-folder moves a folder. Also returns the choices to record (first ones, and
    the user's new ones)."""
    kept: list[FolderPlan] = []
    chosen: list[tuple[FolderPath, FolderPath]] = []
    for plan in plans:
        before = recorded.get(plan.source.path)
        if before is None or (plan.note in USER_MAPPINGS and before != plan.target):
            chosen.append((plan.source.path, plan.target))
        elif before != plan.target:
            plan = replace(plan, target=before, note="kept from the first pass")
        kept.append(plan)
    return kept, chosen
