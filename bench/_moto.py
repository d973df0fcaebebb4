"""A real S3 endpoint for benchmarks: moto's server in its own process on loopback, credentials in the environment.

Its own process, as a real S3 endpoint would be: in-process, moto's request handling would compete with
the benchmarked code for the GIL.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time


class MotoS3:
    def __init__(self, bucket: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}"})
        import boto3

        client = boto3.client("s3")
        for _ in range(100):
            try:
                client.create_bucket(Bucket=bucket)
                return
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(0.1)
        raise RuntimeError("moto server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def start_moto_s3(bucket: str) -> MotoS3:
    """Start moto's S3 server on a free loopback port and create `bucket`; call .stop() when done."""
    return MotoS3(bucket)
