"""Where backups are sent. Only FTP/FTPS so far; each type gets a module here."""
