"""The student at serving time, and HTTP input validation (no Ray)."""
