import pytest

from cdkd_ray.core.data_config import DataConfig
from cdkd_ray.core.errors import ConfigError
from cdkd_ray.core.read_plan import read_task_count


def test_small_parts_are_grouped_to_about_the_images_a_task_should_read():
    assert read_task_count([50] * 60, images_per_task=256, slots=2) == 12  # 5 parts (250 images) a task
    assert read_task_count([50] * 61, images_per_task=256, slots=2) == 13  # the last task reads one part
    assert read_task_count([10, 10, 4] * 4, images_per_task=16, slots=2) == 6


def test_a_part_is_never_split_and_large_parts_stay_one_a_task():
    assert read_task_count([1000] * 30, images_per_task=256, slots=2) == 30
    assert read_task_count([50] * 60, images_per_task=1, slots=2) == 60


def test_every_slot_keeps_two_tasks_and_fewer_parts_than_that_are_split():
    assert read_task_count([50] * 60, images_per_task=10_000, slots=2) == 4
    assert read_task_count([50] * 60, images_per_task=10_000, slots=16) == 32
    assert read_task_count([5000] * 3, images_per_task=256, slots=2) == 4  # 3 parts, 4 tasks: the reader splits
    assert read_task_count([50] * 60, images_per_task=256, slots=0) == 12


def test_where_ray_data_sizes_the_pool_fewer_parts_are_read_one_a_task_not_split():
    assert read_task_count([1000] * 30, images_per_task=256, slots=64, split_parts=False) == 30
    assert read_task_count([5000], images_per_task=256, slots=64, split_parts=False) == 2
    assert read_task_count([50] * 600, images_per_task=256, slots=64, split_parts=False) == 128


def test_images_per_task_must_be_positive():
    with pytest.raises(ConfigError, match="images_per_task"):
        DataConfig(images_per_task=0).validate()
