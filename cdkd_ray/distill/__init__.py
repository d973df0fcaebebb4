"""CDKD: losses with channel dropout, train-only modules, the teacher stage."""
