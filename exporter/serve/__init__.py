"""`pageheat serve`: the daemon, its scheduling and budget, the collector and the HTTP service."""
