"""Reports: tables (terminal and Markdown) and figures."""
