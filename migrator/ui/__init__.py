"""Everything the user reads: a copy's progress (progress.py), the tables and JSON printed
when a command ends (report.py), `batch`'s progress, table, JSON and CSV (batch.py), their
building blocks (text.py) and the one way to write a line to stderr (console.py). Library code
never prints: it hands results and events to these."""
