"""What goes into a backup: files now; databases and WordPress sites later."""
