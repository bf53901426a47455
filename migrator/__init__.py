"""migrator: move email between IMAP, POP3, mbox and Maildir, resumably."""

__version__ = "0.1.0"
