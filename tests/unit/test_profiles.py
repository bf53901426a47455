"""Provider profiles: every shipped file validates and says where its numbers come from; user
profiles override shipped ones setting by setting; PROFILE:USER resolves to the provider's
server; `migrator profiles list|show` print them with their sources."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from migrator.endpoints import (
    AccessOptions,
    ProfileEndpoint,
    ServerEndpoint,
    open_store,
    parse_endpoint,
    resolve_profile,
)
from migrator.errors import ConfigError
from migrator.profiles import comments, folder_adjustments, load_catalog, shipped_dir

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "profiles").glob("*.toml"))
REQUIRED_PROFILES = {
    "gmail",
    "outlook",
    "exchange",
    "yahoo",
    "aol",
    "icloud",
    "fastmail",
    "gmx",
    "web.de",
    "zoho",
    "yandex",
    "mailbox.org",
    "posteo",
    "proton-bridge",
    "dovecot",
}


def test_the_issue_lists_are_all_shipped():
    assert {p.stem for p in SHIPPED} >= REQUIRED_PROFILES


def test_the_package_finds_the_repository_profiles():
    assert shipped_dir().resolve() == (REPO / "profiles").resolve()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"migrator.shipped_profiles" = "profiles"' in pyproject


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_profile_validates(path: Path):
    profile = load_catalog(None, shipped=path.parent).get(path.stem)
    assert profile.name == path.stem
    assert profile.imap.port > 0 and profile.imap.tls in ("implicit", "starttls")
    assert profile.auth_methods
    if "oauth2" in profile.auth_methods:
        assert profile.oauth2 is not None and profile.oauth2.scopes
    if profile.rules.fold_long_lines:
        assert profile.limits.max_line_length


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_number_says_where_it_comes_from(path: Path):
    numeric = re.compile(r"^\s*([A-Za-z0-9_]+)\s*=\s*[0-9]")
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if numeric.match(line):
            assert "#" in line and len(line.split("#", 1)[1].strip()) > 10, (
                f"{path.name}:{number}: a number without a comment saying where it comes from"
            )


def test_the_known_figures():
    catalog = load_catalog(None)
    gmail, outlook = catalog.get("gmail"), catalog.get("outlook")
    assert gmail.limits.max_message_size == 35_651_584
    assert gmail.limits.upload_bytes_per_day == 500_000_000
    assert gmail.limits.download_bytes_per_day == 2_500_000_000
    assert {"[Gmail]/All Mail", "[Gmail]/Important", "[Gmail]/Starred"} <= set(gmail.skip)
    assert gmail.gmail_ids and gmail.oauth2_mechanism == "xoauth2"
    assert outlook.limits.max_message_size == 35 * 1024 * 1024
    assert outlook.limits.max_line_length and outlook.limits.max_line_length < 10_000
    assert outlook.rules.fold_long_lines and outlook.reserved == ("Files",)
    assert outlook.auth_methods == ("oauth2",) and outlook.oauth2 is not None
    assert outlook.oauth2.flow == "device" and outlook.oauth2.device_url
    assert catalog.get("icloud").seen_on_fetch
    assert catalog.get("yahoo").rules.final_crlf


def test_comments_are_read_beside_their_settings_and_not_inside_strings():
    text = '[imap]\nhost = "a#b"  # the host\nport = 993  # IMAP over TLS\n\n[limits]\nx = 1\n'
    assert comments(text) == {"imap.host": "the host", "imap.port": "IMAP over TLS"}


def profile_endpoint(text: str) -> ProfileEndpoint:
    endpoint = parse_endpoint(text)
    assert isinstance(endpoint, ProfileEndpoint)
    return endpoint


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path


def test_a_user_profile_overrides_a_shipped_one_setting_by_setting(tmp_path):
    user = tmp_path / "profiles"
    write(user, "gmail", "[limits]\nconnections = 4  # my Workspace admin says so\n")
    catalog = load_catalog(user)
    gmail = catalog.get("gmail")
    assert gmail.limits.connections == 4
    assert gmail.limits.max_message_size == 35_651_584  # still the shipped figure
    by_key = {s.key: s for s in gmail.settings}
    assert by_key["limits.connections"].source == str(user / "gmail.toml")
    assert by_key["limits.connections"].note == "my Workspace admin says so"
    assert Path(by_key["imap.host"].source).parent == shipped_dir()
    assert catalog.origin("gmail") == "user (overrides shipped)"


def test_a_new_user_profile_is_a_profile(tmp_path):
    user = tmp_path / "profiles"
    write(
        user,
        "corp",
        'description = "Our mail"\n[imap]\nhost = "mail.corp.example"\nport = 993  # ours\n'
        'tls = "implicit"\n[auth]\nmethods = ["password"]\n',
    )
    catalog = load_catalog(user)
    assert "corp" in catalog.names() and catalog.origin("corp") == "user"
    endpoint = parse_endpoint("corp:alice@corp.example")
    assert isinstance(endpoint, ProfileEndpoint)
    server = resolve_profile(endpoint, catalog.get("corp"), "source")
    assert server == ServerEndpoint(
        "imap", "implicit", "alice@corp.example", "mail.corp.example", 993
    )


@pytest.mark.parametrize(
    "text, needle",
    [
        ("description = 1\n", "description must be a string"),
        ('description = "x"\nbogus = 1\n', "unknown setting 'bogus'"),
        ('[limits]\nmax_message_size = "big"\n', "[limits] max_message_size must be a positive"),
        ("[limits]\nmax_size = 5\n", "unknown setting [limits] max_size"),
        ('[imap]\nport = 99999\ntls = "implicit"\n', "[imap] port must be a port number"),
        ('[imap]\nport = 993\ntls = "ssl"\n', "[imap] tls must be one of 'implicit'"),
        ('[auth]\nmethods = ["carrier pigeon"]\n', "[auth] methods must be a list"),
        ('description = "x"\n[imap]\nport = 993\ntls = "implicit"\n', "[auth] methods is missing"),
        ("[imap\n", "not valid TOML"),
        (
            'description = "x"\n[imap]\nport = 993\ntls = "implicit"\n[auth]\nmethods=["oauth2"]\n',
            "[oauth2] is missing",
        ),
        (
            'description = "x"\n[imap]\nport = 993\ntls = "implicit"\n[auth]\nmethods=["password"]'
            "\n[rules]\nfold_long_lines = true\n",
            "fold_long_lines needs [limits] max_line_length",
        ),
    ],
)
def test_a_bad_profile_is_one_clear_error_naming_the_file(tmp_path, text, needle):
    path = write(tmp_path / "profiles", "broken", text)
    with pytest.raises(ConfigError) as info:
        load_catalog(tmp_path / "profiles").get("broken")
    assert needle in str(info.value) and str(path) in str(info.value)
    assert info.value.exit_status == 2


def test_an_unknown_profile_names_where_profiles_live(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown profile 'nosuch'.*profiles list"):
        load_catalog(tmp_path).get("nosuch")


def test_gmail_and_outlook_endpoints_resolve_to_the_provider():
    catalog = load_catalog(None)
    gmail = resolve_profile(
        profile_endpoint("gmail:alice@gmail.com"), catalog.get("gmail"), "source"
    )
    assert gmail == ServerEndpoint("imap", "implicit", "alice@gmail.com", "imap.gmail.com", 993)
    outlook = resolve_profile(
        profile_endpoint("outlook:bob@contoso.com"), catalog.get("outlook"), "target"
    )
    assert (outlook.host, outlook.port, outlook.tls) == ("outlook.office365.com", 993, "implicit")
    access = AccessOptions(secret=lambda: "tok", auth="xoauth2", profile=catalog.get("gmail"))
    store: Any = open_store(parse_endpoint("gmail:alice@gmail.com"), access, "source")
    assert store.access.host == "imap.gmail.com" and store.access.auth == "xoauth2"
    assert store.label == "gmail:alice@gmail.com" and store.gmail_ids


def test_a_profile_without_a_host_wants_a_url():
    with pytest.raises(ConfigError, match=r"no fixed host.*--source-profile exchange"):
        resolve_profile(
            profile_endpoint("exchange:bob@corp.example"),
            load_catalog(None).get("exchange"),
            "source",
        )


def test_gmail_labels_are_skipped_unless_named_and_all_mail_goes_alone():
    gmail = load_catalog(None).get("gmail")
    plain = folder_adjustments(gmail, None, [], {}, None)
    assert "[Gmail]/All Mail" in plain.exclude and "[Gmail]/Starred" in plain.exclude
    assert plain.notices and not plain.include
    named = folder_adjustments(gmail, None, ["[Gmail]/Starred"], {}, None)
    assert "[Gmail]/Starred" not in named.exclude
    alone = folder_adjustments(gmail, None, [], {}, "Gmail archive")
    assert alone.include == ("[Gmail]/All Mail",) and not alone.exclude
    assert alone.renames == {"[Gmail]/All Mail": "Gmail archive"}
    with pytest.raises(ConfigError, match="--all-mail"):
        folder_adjustments(None, None, [], {}, "x")


def test_a_reserved_target_name_is_renamed_unless_mapped():
    outlook = load_catalog(None).get("outlook")
    assert folder_adjustments(None, outlook, [], {}, None).renames == {"Files": "Files (migrated)"}
    assert folder_adjustments(None, outlook, [], {"Files": "Old files"}, None).renames == {}


def migrator(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "PYTHONPATH": str(REPO),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
    }
    return subprocess.run(
        [sys.executable, "-m", "migrator", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_profiles_show_gmail_prints_settings_with_their_sources(tmp_path):
    result = migrator("profiles", "show", "gmail", home=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "profile gmail: Gmail and Google Workspace" in out
    assert "gmail.toml" in out
    assert 'imap.host = "imap.gmail.com"  [shipped]' in out
    assert "limits.max_message_size = 35651584  [shipped]" in out
    assert "APPENDLIMIT=35651584" in out  # the note saying where the figure comes from
    assert "support.google.com/a/answer/1071518" in out


def test_profiles_list_and_show_tell_a_user_override_apart(tmp_path):
    write(
        tmp_path / "config" / "migrator" / "profiles",
        "gmail",
        "[limits]\nconnections = 3  # mine\n",
    )
    listed = migrator("profiles", "list", home=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert re.search(
        r"^gmail +Gmail and Google Workspace \[user \(overrides shipped\)\]", listed.stdout, re.M
    )
    assert str(tmp_path / "config" / "migrator" / "profiles") in listed.stdout
    shown = migrator("profiles", "show", "gmail", "--json", home=tmp_path)
    settings = {s["key"]: s for s in json.loads(shown.stdout)["settings"]}
    assert settings["limits.connections"]["value"] == 3
    assert settings["limits.connections"]["note"] == "mine"
    assert "config/migrator/profiles/gmail.toml" in settings["limits.connections"]["source"]


def test_an_unknown_profile_endpoint_is_a_usage_error_in_one_line(tmp_path):
    result = migrator("copy", "nosuch:alice@example.org", "maildir:x", home=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "unknown profile 'nosuch'" in result.stderr


def test_outlook_without_a_token_says_how_to_get_one(tmp_path):
    result = migrator(
        "copy",
        "outlook:bob@contoso.com",
        f"mbox:{tmp_path / 'x.mbox'}",
        home=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "no OAuth2 access token" in line
    assert (
        "MIGRATOR_SOURCE_OAUTH2_TOKEN" in line
        and "migrator auth login outlook:bob@contoso.com" in line
    )
