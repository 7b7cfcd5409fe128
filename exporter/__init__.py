"""pageheat: where a process's memory is hot or cold, from page-table Accessed bits."""

__version__ = "0.1.0"
