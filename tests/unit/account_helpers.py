"""Small ways into migrator.account that only the tests need (the package keeps none of them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from migrator.account import SecretRecipe, option_label, parse_flags, profile_catalog, recipe_env
from migrator.credentials import SecretSources, secret_provider
from migrator.profiles import Profile


def flag_names(names: Sequence[str]) -> frozenset[str]:
    """--flags as the engine takes them (what `copy` does through copy_options)."""
    return parse_flags(names, option_label("flags"))


def load_profile(name: str) -> Profile:
    """A provider profile, shipped or the user's own; ConfigError names an unknown one."""
    return profile_catalog().get(name)


def resolve_secret(
    recipe: SecretRecipe, side: str, label: str, keyring_user: str
) -> Callable[[], str]:
    """The recipe's password alone, as a callable, in this process (no OAuth2, no profile)."""
    sources = SecretSources(
        side, Path(recipe.file).expanduser() if recipe.file else None, recipe.cmd
    )
    env = recipe_env(recipe, side, label)
    return secret_provider(
        sources, label=label, keyring_user=keyring_user, env=env, interactive=False
    )
