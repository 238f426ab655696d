"""What the CLI and the scheduler ask for, one module each, each a plain sequence of
steps that live elsewhere:

- backup.py   one run: sources, dumps and archive, publish, manifest, retention
- prune.py    retention: the plan (pure) and its deletion; the run's and `prune`'s
- restore.py  choose, download, check, extract; a database loaded on request
- verify.py   download, check and read a backup to the end, recorded as a run
"""
