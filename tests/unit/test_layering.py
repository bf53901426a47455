"""The shape of the package, checked: stores never import the engine or the CLI, the engine never
names a concrete store, and nothing imports the CLI."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "migrator"


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_nothing_imports_the_cli():
    for path in PACKAGE.rglob("*.py"):
        if path.name not in ("cli.py", "__main__.py"):
            assert "migrator.cli" not in imports(path), path


def test_stores_keep_to_their_room():
    banned = {
        "migrator.engine",
        "migrator.checkpoint",
        "migrator.cli",
        "migrator.endpoints",
        "tqdm",
        "typer",
    }
    stores = {"imap", "pop3", "mbox", "maildir"}
    for path in (PACKAGE / "stores").rglob("*.py"):
        used = imports(path)
        # a banned package's modules too (migrator.checkpoint.rows, migrator.engine.plan, ...)
        refused = {m for m in used if m in banned or any(m.startswith(b + ".") for b in banned)}
        assert not refused, (path, refused)
        # A store that is a package (stores/imap/) may import its own modules; no other store.
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        own = "migrator." + ".".join(parts[:2]) if len(parts) > 2 else None
        others = {
            m
            for m in used
            if m.startswith("migrator.stores.")
            and m != "migrator.stores.base"
            and not (own and (m == own or m.startswith(own + ".")))
        }
        helpers = {m for m in others if not set(m.split(".")[2:]) & stores}
        assert others == helpers, (path, others)


#: What the engine and the core may import from stores/: the interface, and the target that
#: writes nothing behind it (--dry-run), which speaks no protocol either.
PROTOCOL_FREE = {"migrator.stores.base", "migrator.stores.dryrun"}


def test_engine_and_core_never_name_a_concrete_store_or_print():
    engine = sorted(p.relative_to(PACKAGE).as_posix() for p in (PACKAGE / "engine").glob("*.py"))
    assert engine, "the engine package is missing"
    for name in (
        *engine,
        "converge.py",
        *(f"checkpoint/{p.name}" for p in (PACKAGE / "checkpoint").glob("*.py")),
        "folders.py",
        "filters.py",
        "model.py",
    ):
        source = (PACKAGE / name).read_text()
        used = imports(PACKAGE / name)
        assert not any(m.startswith("migrator.stores.") and m not in PROTOCOL_FREE for m in used)
        assert "print(" not in source and "typer" not in source and "tqdm" not in source


def test_the_ui_only_presents():
    """migrator/ui/ turns results into text: the CLI calls it, it never calls the CLI or typer,
    and the rest of the package (stores, engine, batch) may import only its pure ui.text."""
    for path in (PACKAGE / "ui").glob("*.py"):
        assert not imports(path) & {"migrator.cli", "typer", "click"}, path
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name != "ui" and path.name != "cli.py":
            used = {m for m in imports(path) if m.startswith("migrator.ui")}
            assert used <= {"migrator.ui.text"}, (path, used)


#: Library functions allowed to read the environment, each by name. account.recipe_env reads the
#: one variable a batch manifest row names for an account's password (``source_password_env``):
#: it must be read on the Dask worker that runs the account, where the CLI's environment is not,
#: so that a secret never crosses the scheduler.
ENVIRONMENT_READERS = {("account.py", "recipe_env")}
#: The names that read it (os.environ, os.getenv, ...).
READERS = {"environ", "environb", "getenv", "getenvb"}


def environment_reads(path: Path) -> set[str]:
    """The functions (or "<module>") of ``path`` that name os.environ, os.getenv and the like."""
    found: set[str] = set()

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = where
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = child.name
            if isinstance(child, ast.Attribute) and child.attr in READERS:
                found.add(where)
            if isinstance(child, ast.ImportFrom) and {a.name for a in child.names} & READERS:
                found.add(where)
            visit(child, inner)

    visit(ast.parse(path.read_text()), "<module>")
    return found


def test_library_code_reads_no_environment():
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("cli.py",):
            continue
        for where in environment_reads(path):
            assert (path.name, where) in ENVIRONMENT_READERS, (path, where)
    assert environment_reads(PACKAGE / "account.py") == {"recipe_env"}
