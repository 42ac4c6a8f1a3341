"""`mops reproduce`: the paper's tables and figures as grids of cached, resumable runs."""
