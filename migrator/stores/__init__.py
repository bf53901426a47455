"""Stores: one class per kind of mailbox, all behind the interfaces of stores.base."""
