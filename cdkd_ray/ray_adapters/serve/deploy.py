"""Starting the Serve application on a local Ray or a cluster."""

from __future__ import annotations

import time

from cdkd_ray.ray_adapters.serve.app import ServeConfig, build_app

APP_NAME = "cdkd-pose"


def run_serve(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
              block: bool = False, proxy_location: str = "EveryNode", app_name: str = APP_NAME,
              route_prefix: str = "/") -> str:
    """Deploy the app; returns its base URL. With block, serve until interrupted, then shut down.

    proxy_location=HeadOnly when all "nodes" share one machine (a local autoscaling cluster): the
    per-node HTTP proxies would otherwise compete for the same port.
    """
    from ray import serve

    from cdkd_ray.ray_adapters.runtime import ensure_ray

    ensure_ray(address)
    serve.start(http_options={"host": host, "port": port, "request_timeout_s": cfg.request_timeout_s + 5},
                proxy_location=proxy_location)
    serve.run(build_app(cfg), name=app_name, route_prefix=route_prefix)
    url = f"http://{host}:{port}{route_prefix.rstrip('/')}"
    print(f"serving {cfg.model_uri} at {url}  (POST /v1/keypoints, /v1/keypoints/render; GET /healthz, "
          f"/v1/model; OpenAPI at {url}/docs)", flush=True)
    if block:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.shutdown()
    return url
