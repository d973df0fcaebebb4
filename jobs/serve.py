"""Ray Job entrypoint: `ray job submit --working-dir . -- python jobs/serve.py ARGS` runs `cdkd-ray serve ARGS`."""

from _entry import run

if __name__ == "__main__":
    run("serve")
