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
    for path in (PACKAGE / "stores").glob("*.py"):
        used = imports(path)
        assert not used & banned, (path, used & banned)
        others = {
            m for m in used if m.startswith("migrator.stores.") and m != "migrator.stores.base"
        }
        helpers = {
            m for m in others if m.rsplit(".", 1)[1] not in {"imap", "pop3", "mbox", "maildir"}
        }
        assert others == helpers, (path, others)


def test_engine_and_core_never_name_a_concrete_store_or_print():
    for name in ("engine.py", "checkpoint.py", "folders.py", "filters.py", "model.py"):
        source = (PACKAGE / name).read_text()
        used = imports(PACKAGE / name)
        assert not any(
            m.startswith("migrator.stores.") and m != "migrator.stores.base" for m in used
        )
        assert "print(" not in source and "typer" not in source and "tqdm" not in source


def test_library_code_reads_no_environment():
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("cli.py",):
            continue
        assert "os.environ" not in path.read_text(), path
