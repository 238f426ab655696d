"""FTP and FTPS, behind the destination seam.

- replies.py      reply codes by name, and the one way to read a code
- dialogue.py     ftplib hooked to log and record every line, bound every reply, and
                  open data connections as configured (EPSV/PASV/PORT, TLS reuse)
- session.py      one logged-in connection in one mode: upload, download, listings
- remote.py       the directory over sessions reopened after transient failures:
                  retries, resume, a rename safe to repeat, the probe of one mode
- diagnosis.py    what a failed dialogue means (FTP_RULES), as pure functions
- destination.py  the seam: publish (temp, rename, verify), fallback, rollback
- checkup.py      `backupagent diagnose`: every step and mode, and what to set
"""
