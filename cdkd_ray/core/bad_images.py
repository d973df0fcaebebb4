"""Which images a run skipped as undecodable (data.on_bad_image=skip): recorded in the run's folder, not only logged.

One empty object per image, RUN_DIR/bad_images/IMAGE_ID, written by the data task that met it: no process
of its own (a counter actor cost every run a Ray worker process, bad images or not), the same image
skipped again (every epoch, a resumed run) is recorded once, and the record stays with the run.
"""

from __future__ import annotations

from dataclasses import dataclass

from cdkd_ray.core.storage import Location, resolve

BAD_IMAGES_DIR = "bad_images"


@dataclass(frozen=True)
class BadImageRecord:
    """A run's record of skipped images; small and picklable, so data tasks and train workers each get a copy."""

    uri: str  # RUN_DIR/bad_images, a folder or s3://
    s3_endpoint: str | None = None

    @classmethod
    def in_run(cls, run_dir: Location, s3_endpoint: str | None = None) -> "BadImageRecord":
        return cls(run_dir.join(BAD_IMAGES_DIR).uri, s3_endpoint)

    def add(self, image_id: int) -> None:
        resolve(self.uri, self.s3_endpoint).join(str(int(image_id))).write_bytes(b"")

    def image_ids(self) -> list[int]:
        return sorted(int(name) for name in resolve(self.uri, self.s3_endpoint).listdir_names() if name.isdigit())

    def total(self) -> int:
        return len(self.image_ids())
