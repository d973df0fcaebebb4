"""Ray Job entrypoint: `ray job submit --working-dir . -- python jobs/distill.py ARGS` runs `cdkd-ray distill ARGS`."""

from _entry import run

if __name__ == "__main__":
    run("distill")
