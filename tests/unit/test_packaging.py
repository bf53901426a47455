"""What a user installs: the sdist and the wheel built from a clone, as pip would build them.

The clone is made without symlinks (Git for Windows' default, `core.symlinks=false`): the
provider profiles must reach the wheel all the same, and the installed command must list them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROFILES = sorted(p.name for p in (REPO / "profiles").glob("*.toml"))


def run(*cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"{cmd}: {done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel) built from a symlink-free clone, the wheel from the sdist as `build` does."""
    if not (REPO / ".git").exists():
        pytest.skip("needs the git checkout (an unpacked sdist has no history to clone)")
    root = tmp_path_factory.mktemp("packaging")
    clone = root / "clone"
    run("git", "-c", "core.symlinks=false", "clone", "-q", "--no-hardlinks", REPO, clone)
    assert not [p for p in clone.rglob("*") if p.is_symlink()]
    out = root / "dist"
    run(sys.executable, "-m", "build", "--outdir", out, clone)
    [sdist] = out.glob("*.tar.gz")
    [wheel] = out.glob("*.whl")
    return sdist, wheel


def test_the_distribution_has_a_name_of_its_own() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # `migrator` on PyPI is another project: every install hint must name ours.
    assert project["name"] == "mailbox-migrator"
    assert project["scripts"] == {"migrator": "migrator.cli:main"}
    assert project["license"] == "MIT" and (REPO / "LICENSE").is_file()
    hints = [REPO / "README.md", *(REPO / "migrator").rglob("*.py")]
    for path in hints:
        text = path.read_text(encoding="utf-8")
        assert "install 'migrator[" not in text and "install migrator" not in text, path


def test_every_package_directory_is_packaged() -> None:
    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "migrator").rglob("__init__.py")
    }
    assert on_disk | {"migrator.shipped_profiles"} == listed


def test_the_sdist_carries_tests_examples_profiles_and_license(built: tuple[Path, Path]) -> None:
    sdist, _ = built
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {
        "LICENSE",
        "README.md",
        "pyproject.toml",
        "tests/run.sh",
        "examples/sample.mbox",
    } <= names
    assert {f"profiles/{name}" for name in PROFILES} <= names
    assert "tests/unit/test_packaging.py" in names
    assert not [name for name in names if name.endswith(".pyc")]


def test_the_wheel_installs_a_command_that_lists_every_profile(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    _, wheel = built
    with zipfile.ZipFile(wheel) as archive:
        packed = {n for n in archive.namelist() if n.startswith("migrator/shipped_profiles/")}
        license_files = [n for n in archive.namelist() if n.endswith("/LICENSE")]
    assert {f"migrator/shipped_profiles/{name}" for name in PROFILES} <= packed
    assert license_files
    # Installed beside nothing else of ours: this interpreter's dependencies, the wheel's code.
    target = tmp_path / "site"
    run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target, wheel)
    env = {**os.environ, "PYTHONPATH": str(target), "HOME": str(tmp_path)}
    env.pop("XDG_CONFIG_HOME", None)
    where = run(
        sys.executable, "-c", "import migrator; print(migrator.__file__)", cwd=tmp_path, env=env
    )
    assert Path(where.strip()).is_relative_to(target)
    listing = run(sys.executable, "-m", "migrator", "profiles", "list", cwd=tmp_path, env=env)
    names = [line.split()[0] for line in listing.splitlines() if not line.startswith("your own")]
    assert sorted(f"{name}.toml" for name in names) == PROFILES
    assert len(PROFILES) == 15
