"""The private imaplib/imapclient members the IMAP wire layer relies on (wire.RELIED_ON) are
there, with the shapes it uses, in the installed versions; and no other module uses them."""

from __future__ import annotations

import ast
import importlib
import inspect
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from migrator.stores.imap import wire

PACKAGE = Path(__file__).resolve().parents[2] / "migrator"
WIRE = PACKAGE / "stores" / "imap" / "wire.py"
#: Attributes the wire layer sets on imaplib's connection object itself.
OURS = {"_migrator_allowed", "_migrator_timeout"}
#: imapclient modules whose functions are not its documented API.
INTERNAL_MODULES = {
    "imapclient.imapclient",
    "imapclient.response_parser",
    "imapclient.datetime_util",
}


def owner_of(member: wire.Member) -> Any:
    module_name, _, class_name = member.owner.partition(".")
    if member.owner in INTERNAL_MODULES or member.owner == "imaplib":
        return importlib.import_module(member.owner)
    return getattr(importlib.import_module(module_name), class_name)


CALLABLES = [m for m in wire.RELIED_ON if m.params is not None]
ATTRIBUTES = [m for m in wire.RELIED_ON if m.params is None]


@pytest.mark.parametrize("member", CALLABLES, ids=lambda m: f"{m.owner}.{m.name}")
def test_each_callable_is_there_with_its_parameters(member: wire.Member) -> None:
    where = f"{member.owner}.{member.name}"
    owner = owner_of(member)
    assert hasattr(owner, member.name), f"{where} is gone: the IMAP wire layer calls it"
    found = getattr(owner, member.name)
    assert callable(found), f"{where} is no longer callable"
    params = list(inspect.signature(found).parameters.values())
    names = tuple(p.name for p in params[: len(member.params or ())])
    assert names == member.params, (
        f"{where} now takes {names}, the wire layer passes {member.params}"
    )
    for extra in params[len(names) :]:
        assert extra.default is not inspect.Parameter.empty or extra.kind in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        ), f"{where} has a new required parameter {extra.name!r}"


@contextmanager
def greeted() -> Iterator[IMAPClient]:
    """An IMAPClient connected to a one-shot server on 127.0.0.1 that only greets."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        with suppress(OSError), listener, listener.accept()[0] as conn:
            conn.settimeout(10)
            conn.sendall(b"* OK ready\r\n")
            for line in conn.makefile("rb"):  # CAPABILITY, then whatever: all answered OK
                tag = line.split(b" ", 1)[0]
                conn.sendall(b"* CAPABILITY IMAP4rev1\r\n" + tag + b" OK done\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = IMAPClient("127.0.0.1", port=listener.getsockname()[1], ssl=False, timeout=10)
    try:
        yield client
    finally:
        client.shutdown()
        thread.join(10)


def test_each_attribute_is_there_with_its_kind() -> None:
    with greeted() as client:
        for member in ATTRIBUTES:
            where = f"{member.owner}.{member.name}"
            holder = {
                "imapclient.IMAPClient": client,
                "imaplib.IMAP4": client._imap,
            }.get(member.owner) or owner_of(member)
            assert hasattr(holder, member.name), f"{where} is gone: the IMAP wire layer uses it"
            value = getattr(holder, member.name)
            assert member.kind is not None and isinstance(value, member.kind), (
                f"{where} is now a {type(value).__name__}, the wire layer uses a "
                f"{getattr(member.kind, '__name__', member.kind)}"
            )


def private_names(tree: ast.AST) -> set[str]:
    """The _underscored attributes a module reads or sets on anything but ``self``, and those
    it names to getattr."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.add(node.attr)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr":
            name = node.args[1] if len(node.args) > 1 else None
            if isinstance(name, ast.Constant) and str(name.value).startswith("_"):
                found.add(str(name.value))
    return found


def test_the_table_names_every_private_member_the_wire_layer_uses() -> None:
    listed = {m.name for m in wire.RELIED_ON}
    unlisted = private_names(ast.parse(WIRE.read_text())) - OURS - listed
    assert not unlisted, f"wire.py uses {sorted(unlisted)}: add them to wire.RELIED_ON"


def test_no_other_module_uses_them() -> None:
    relied = {m.name for m in wire.RELIED_ON if m.name.startswith("_")} | OURS
    for path in PACKAGE.rglob("*.py"):
        if path == WIRE:
            continue
        tree = ast.parse(path.read_text())
        used = private_names(tree) & relied
        assert not used, f"{path} uses {sorted(used)}: only the IMAP wire layer may"
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not imported & INTERNAL_MODULES, f"{path} imports imapclient's internals"
