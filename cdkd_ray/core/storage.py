"""Object storage access: local folders and s3:// URIs through fsspec/s3fs."""

from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass

import fsspec

S3_ENDPOINT_ENV_VARS = ("CDKD_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def is_s3(uri: str) -> bool:
    return uri.startswith(("s3://", "s3a://"))


def s3_endpoint(explicit: str | None = None) -> str | None:
    """The S3 endpoint: an explicit value, else the standard AWS environment variables."""
    if explicit:
        return explicit
    for name in S3_ENDPOINT_ENV_VARS:
        if os.environ.get(name):
            return os.environ[name]
    return None


@dataclass(frozen=True)
class Location:
    """A filesystem plus a path on it; `uri` is what users typed."""

    fs: fsspec.AbstractFileSystem
    path: str
    uri: str

    def join(self, *parts: str) -> "Location":
        sep = "/" if self.is_remote else os.sep
        path = self.path.rstrip(sep) + sep + sep.join(p.strip("/") for p in parts)
        uri = self.uri.rstrip("/") + "/" + "/".join(p.strip("/") for p in parts)
        return Location(self.fs, path, uri)

    @property
    def is_remote(self) -> bool:
        return is_s3(self.uri)

    def exists(self) -> bool:
        return self.fs.exists(self.path)

    def read_bytes(self) -> bytes:
        with self.fs.open(self.path, "rb") as f:
            return f.read()

    def write_bytes(self, data: bytes) -> None:
        if not self.is_remote:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with self.fs.open(self.path, "wb") as f:
            f.write(data)

    def write_atomic(self, data: bytes) -> None:
        """Replace the object in one step: a rename of a finished temp file locally, one PUT on S3."""
        if self.is_remote:
            self.write_bytes(data)  # an S3 PUT is atomic: readers see the old or the new object
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = f"{self.path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def create_exclusive(self, data: bytes) -> bool:
        """Write only if nothing is there yet (O_EXCL locally, a conditional PUT on S3); False if taken."""
        if self.is_remote:
            try:
                self.fs.pipe_file(self.path, data, mode="create")
            except FileExistsError:
                return False
            return True
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def makedirs(self) -> None:
        if not self.is_remote:
            os.makedirs(self.path, exist_ok=True)

    def remove(self) -> None:
        """Remove this path recursively if it exists."""
        if self.fs.exists(self.path):
            self.fs.rm(self.path, recursive=True)
        self.invalidate()

    def invalidate(self) -> None:
        self.fs.invalidate_cache()

    def listdir_names(self) -> list[str]:
        if not self.fs.exists(self.path):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.path, detail=False))


def s3_filesystem(endpoint: str | None = None) -> fsspec.AbstractFileSystem:
    import s3fs

    endpoint = s3_endpoint(endpoint)
    client_kwargs = {"endpoint_url": endpoint} if endpoint else {}
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        client_kwargs["region_name"] = region
    return s3fs.S3FileSystem(client_kwargs=client_kwargs, use_listings_cache=False)


def absolute_uri(uri: str) -> str:
    """s3:// URIs unchanged; local paths made absolute (processes on other nodes have another cwd)."""
    return uri if is_s3(uri) else os.path.abspath(os.path.expanduser(uri))


def resolve(uri: str, s3_endpoint_url: str | None = None) -> Location:
    """Turn a local path or s3:// URI into a Location."""
    if is_s3(uri):
        fs = s3_filesystem(s3_endpoint_url)
        path = uri.split("://", 1)[1].rstrip("/")
        return Location(fs, path, "s3://" + path)
    path = absolute_uri(uri)
    return Location(fsspec.filesystem("file"), path, path)


def pyarrow_filesystem(location: Location):
    """A pyarrow filesystem for a Location (for Ray Train storage)."""
    import pyarrow.fs as pafs

    if not location.is_remote:
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(location.fs))


def arrow_s3_filesystem(location: Location):
    """pyarrow's own S3 client (C++: concurrent range reads, no Python per request) for the same endpoint and region.

    Credentials come from the standard AWS chain (environment, profile, instance or pod role), as for s3fs.
    """
    import pyarrow.fs as pafs

    client = getattr(location.fs, "client_kwargs", None) or {}
    options: dict = {}
    endpoint = client.get("endpoint_url")
    if endpoint:
        scheme, sep, host = endpoint.partition("://")
        options.update(endpoint_override=host if sep else scheme, scheme=scheme if sep else "https")
    region = client.get("region_name") or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        options["region"] = region
    return pafs.S3FileSystem(**options)
