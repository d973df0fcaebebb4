"""The apps: the cdkd-ray CLI and the quickstart."""
