"""Ray Job entrypoint: `ray job submit --working-dir . -- python jobs/sweep.py ARGS` runs `cdkd-ray sweep ARGS`."""

from _entry import run

if __name__ == "__main__":
    run("sweep")
