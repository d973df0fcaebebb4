"""Ray Job entrypoint: `ray job submit --working-dir . -- python jobs/compare.py ARGS` runs `cdkd-ray compare ARGS`."""

from _entry import run

if __name__ == "__main__":
    run("compare")
