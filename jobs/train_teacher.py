"""Ray Job entrypoint: `ray job submit --working-dir . -- python jobs/train_teacher.py ARGS` runs `cdkd-ray train-teacher ARGS`."""

from _entry import run

if __name__ == "__main__":
    run("train-teacher")
