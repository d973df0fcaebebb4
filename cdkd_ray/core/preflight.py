"""Can this job ever run on this cluster? The bundles a job asks Ray for, against the cluster at its largest.

Ray waits forever for a bundle no node can hold (say a teacher pool actor that needs half a GPU when
every GPU is taken by train workers). This computes the job's bundles from its config, the largest
shape of the cluster from a launcher YAML or a KubeRay manifest (or the nodes alive now), places the
bundles greedily (GPU bundles first, each on the smallest node type that fits), and names every bundle
that cannot be placed with the fix. No Ray here: it reads configs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cdkd_ray.core.errors import ConfigError
from cdkd_ray.core.experiment import ExperimentConfig, RunKind, experiment_for

RESOURCE_KEYS = ("CPU", "GPU")


@dataclass(frozen=True)
class Bundle:
    """`count` identical resource requests of one kind, with the change that shrinks them."""

    what: str
    resources: dict[str, float]
    count: int = 1
    fix: str = ""


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict[str, float]
    max_count: int
    head: bool = False


@dataclass
class ClusterShape:
    source: str
    node_types: list[NodeType]
    max_workers: int | None = None  # the launcher's cap on worker nodes of all types together
    exact: bool = True  # False for "the nodes alive now": an autoscaler may still add more

    def totals(self) -> dict[str, float]:
        return {k: sum(t.resources.get(k, 0) * t.max_count for t in self.node_types) for k in RESOURCE_KEYS}


# ---------------------------------------------------------------- what a job asks for

def training_bundles(cfg: ExperimentConfig, kind: RunKind, label: str = "") -> list[Bundle]:
    """Train workers, the teacher pool (CDKD with placement=pool: pool_max actors if persistent, else pool_min)
    and one Ray Data task."""
    cfg = experiment_for(kind, cfg)
    t = cfg.train
    worker = {"CPU": t.cpus_per_worker, **({"GPU": 1.0} if t.use_gpu else {})}
    bundles = [Bundle(f"{label}train worker", worker, t.num_workers,
                      "lower train.num_workers or train.cpus_per_worker, or raise the max of a node group that has "
                      + ("GPUs" if t.use_gpu else "CPUs"))]
    if kind.distills and cfg.teacher.placement == "pool":
        teacher = {"CPU": cfg.teacher.num_cpus, **({"GPU": cfg.teacher.num_gpus} if cfg.teacher.num_gpus else {})}
        count, which = cfg.teacher.pool_actors_at_start()
        bundles.append(Bundle(f"{label}teacher pool actor ({which})", teacher, count,
                              "lower teacher.num_gpus to 0 (the teacher on CPU), or set teacher.placement=worker (the "
                              "teacher on each train worker's GPU), or add a GPU (raise a GPU group's max)"
                              if cfg.teacher.num_gpus else f"lower teacher.num_cpus or teacher.{which}, or add CPUs"))
    bundles.append(Bundle(f"{label}Ray Data task", {"CPU": cfg.data.num_cpus_per_task}, 1,
                          "lower data.num_cpus_per_task or add a CPU group"))
    return bundles


def sweep_bundles(experiment: ExperimentConfig, kind: RunKind, concurrent_trials: int) -> list[Bundle]:
    """Every concurrent trial: its Tune driver and its training run."""
    bundles = []
    for i in range(concurrent_trials):
        bundles.append(Bundle(f"trial {i + 1}: Tune driver", {"CPU": 0.01}, 1))
        bundles += training_bundles(experiment, kind, f"trial {i + 1}: ")
    return bundles


def serve_bundles(min_replicas: int, replica_cpus: float, replica_gpus: float = 0.0, ingress_cpus: float = 0.5,
                  detector: tuple[int, float, float] | None = None) -> list[Bundle]:
    """The ingress, the pose replicas and, with a detector, its (replicas, CPUs, GPUs)."""
    replica = {"CPU": replica_cpus, **({"GPU": replica_gpus} if replica_gpus else {})}
    bundles = [Bundle("Serve ingress (PoseAPI)", {"CPU": ingress_cpus}, 1),
               Bundle("Serve pose replica (min_replicas)", replica, min_replicas,
                      "lower min_replicas or num_cpus, or raise a node group's max")]
    if detector:
        count, cpus, gpus = detector
        bundles.append(Bundle("Serve person detector replica", {"CPU": cpus, **({"GPU": gpus} if gpus else {})},
                              count, "lower detector_replicas, detector_num_cpus or detector_num_gpus"))
    return bundles


# ---------------------------------------------------------------- what a cluster can hold

def _quantity(value) -> float:
    """Kubernetes quantities: '4', '500m', 2 -> cores."""
    text = str(value).strip()
    if text.endswith("m"):
        return float(text[:-1]) / 1000
    return float(text)


def shape_from_launcher(doc: dict, source: str = "launcher config") -> ClusterShape:
    """A cluster-launcher YAML (`ray up`): every node type at its max_workers; the head once."""
    head = doc.get("head_node_type")
    types = []
    for name, spec in (doc.get("available_node_types") or {}).items():
        resources = {k: float(v) for k, v in (spec.get("resources") or {}).items() if k in RESOURCE_KEYS}
        count = 1 if name == head else int(spec.get("max_workers", spec.get("min_workers", 0)))
        types.append(NodeType(name, resources, count, head=name == head))
    if not types:
        raise ConfigError(f"{source}: no available_node_types")
    return ClusterShape(source, types, doc.get("max_workers"))


def _group_resources(group: dict) -> dict[str, float]:
    params = group.get("rayStartParams") or {}
    containers = (((group.get("template") or {}).get("spec") or {}).get("containers") or [{}])
    limits = (containers[0].get("resources") or {}).get("limits") or {}
    cpu = params.get("num-cpus", limits.get("cpu", 0))
    gpu = params.get("num-gpus", limits.get("nvidia.com/gpu", 0))
    return {"CPU": _quantity(cpu), **({"GPU": _quantity(gpu)} if _quantity(gpu) else {})}


def kuberay_cluster_spec(doc: dict) -> dict:
    """The RayCluster spec inside a RayCluster, RayJob or RayService manifest."""
    spec = doc.get("spec") or {}
    kind = doc.get("kind")
    cluster = {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"),
               "RayService": spec.get("rayClusterConfig")}.get(kind)
    if not cluster:
        raise ConfigError(f"not a KubeRay RayCluster, RayJob or RayService manifest (kind {kind!r})")
    return cluster


def shape_from_kuberay(doc: dict, source: str = "KubeRay manifest") -> ClusterShape:
    """Head group once, each worker group at maxReplicas; resources from rayStartParams or container limits."""
    cluster = kuberay_cluster_spec(doc)
    types = [NodeType("head", _group_resources(cluster.get("headGroupSpec") or {}), 1, head=True)]
    for group in cluster.get("workerGroupSpecs") or []:
        count = int(group.get("maxReplicas", group.get("replicas", 0)))
        types.append(NodeType(group.get("groupName", "workers"), _group_resources(group), count))
    return ClusterShape(source, types)


def shape_from_nodes(nodes: list[dict], source: str = "the nodes alive now") -> ClusterShape:
    """Live nodes (ray.nodes()): what the cluster holds now; an autoscaler may add more."""
    types = [NodeType(n.get("NodeID", f"node{i}")[:8], {k: float(n["Resources"].get(k, 0)) for k in RESOURCE_KEYS},
                      1, head="node:__internal_head__" in n["Resources"])
             for i, n in enumerate(nodes) if n.get("Alive")]
    return ClusterShape(source, types, exact=False)


# ---------------------------------------------------------------- placing

@dataclass
class _Node:
    type: NodeType
    free: dict[str, float] = field(default_factory=dict)

    def fits(self, need: dict[str, float]) -> bool:
        return all(self.free.get(k, 0) + 1e-9 >= v for k, v in need.items() if v)

    def take(self, need: dict[str, float]) -> None:
        for k, v in need.items():
            self.free[k] = self.free.get(k, 0) - v


def _open_node(shape: ClusterShape, opened: list[_Node], need: dict[str, float]) -> _Node | None:
    """Start the smallest node type that fits `need` and still has room under its (and the global) maximum."""
    workers = sum(1 for n in opened if not n.type.head)
    for node_type in sorted(shape.node_types, key=lambda t: (t.resources.get("GPU", 0), t.resources.get("CPU", 0))):
        used = sum(1 for n in opened if n.type is node_type)
        capped = not node_type.head and shape.max_workers is not None and workers >= shape.max_workers
        candidate = _Node(node_type, dict(node_type.resources))
        if used < node_type.max_count and not capped and candidate.fits(need):
            opened.append(candidate)
            return candidate
    return None


def place(bundles: list[Bundle], shape: ClusterShape) -> list[dict]:
    """Per bundle kind: how many of its requests found a node (greedy, GPU requests first)."""
    requests = [(b, i) for b in bundles for i in range(b.count)]
    requests.sort(key=lambda r: (-r[0].resources.get("GPU", 0), -r[0].resources.get("CPU", 0)))
    opened: list[_Node] = []
    placed: dict[int, int] = {}
    for bundle, _ in requests:
        node = next((n for n in opened if n.fits(bundle.resources)), None) or _open_node(shape, opened, bundle.resources)
        if node is not None:
            node.take(bundle.resources)
            placed[id(bundle)] = placed.get(id(bundle), 0) + 1
    return [{"what": b.what, "count": b.count, "resources": b.resources, "placed": placed.get(id(b), 0), "fix": b.fix}
            for b in bundles]


def check_fits(bundles: list[Bundle], shape: ClusterShape) -> dict:
    """The placement table, the totals asked and available, and what can never be placed (with fixes)."""
    rows = place(bundles, shape)
    asked = {k: sum(b.resources.get(k, 0) * b.count for b in bundles) for k in RESOURCE_KEYS}
    missing = [r for r in rows if r["placed"] < r["count"]]
    return {"cluster": shape.source, "exact": shape.exact, "rows": rows, "asked": asked,
            "available": shape.totals(), "ok": not missing,
            "missing": [f"{r['what']}: {r['count'] - r['placed']} of {r['count']} x {_fmt(r['resources'])} cannot "
                        f"be placed; {r['fix'] or 'add nodes that can hold it'}" for r in missing]}


def _fmt(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in resources.items()) + "}"


def format_report(report: dict) -> str:
    lines = [f"cluster: {report['cluster']}" + ("" if report["exact"] else " (an autoscaler may add more)"),
             f"  {'bundle':<44}{'count':>6}  {'resources':<22}{'placed':>7}"]
    for r in report["rows"]:
        lines.append(f"  {r['what'][:43]:<44}{r['count']:>6}  {_fmt(r['resources']):<22}{r['placed']:>7}")
    lines.append(f"  asked {_fmt(report['asked'])}; the cluster at its largest holds {_fmt(report['available'])}")
    lines += [f"  CANNOT RUN: {m}" for m in report["missing"]]
    return "\n".join(lines)


def load_cluster_shape(doc: dict, source: str) -> ClusterShape:
    """A launcher YAML or a KubeRay manifest, told apart by their keys."""
    if "available_node_types" in doc:
        return shape_from_launcher(doc, source)
    if str(doc.get("apiVersion", "")).startswith("ray.io/"):
        return shape_from_kuberay(doc, source)
    raise ConfigError(f"{source} is neither a cluster-launcher config nor a KubeRay manifest")

