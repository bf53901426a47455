"""Everything the user reads: the progress shown while a command runs (progress.py), the
tables, JSON and CSV printed when it ends (report.py), their building blocks (text.py) and the
one way to write a line to stderr (console.py). Library code never prints: it hands results and
events to these."""
