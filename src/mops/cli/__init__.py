"""The `mops` command line."""
