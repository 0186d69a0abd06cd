"""Stage 5: reports: the one document writer (Markdown + self-contained HTML) and the reports built on it."""
