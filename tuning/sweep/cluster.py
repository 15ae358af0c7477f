"""Ray for a sweep: start its own (no --address) or join the cluster at --address, then check
what the cluster must offer: a store every node's trials can reach, storage every node sees, and
some node with the resources one trial asks for.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Optional

from trainables.errors import ConfigError
import tuning.console as console
import tuning.credentials as credentials
import tuning.sweep.ray_internals as ray_internals
import tuning.tracking as tracking
from tuning.config import SweepConfig
from tuning.sweep.prepare import _format_resources, check_tracking_target, say

log = logging.getLogger(__name__)


# on a cluster, how long the resource check waits for nodes still joining (a KubeRay RayJob is
# submitted as soon as its cluster is up) before it refuses the sweep
NODE_WAIT_S = 30.0


def check_trial_resources(cfg: SweepConfig, node_wait_s: float = NODE_WAIT_S) -> None:
    """Right after Ray starts or is joined, before any trial is queued: some node must have
    what one trial asks for, else trials wait forever. On a cluster, nodes still joining get
    ``node_wait_s``; an autoscaler may still add such a node: nodes its configuration allows
    count too (as Ray Train checks its workers), and --wait-for-nodes skips the check."""
    import ray

    group = cfg.worker_group
    if group.spread:  # its workers may spread over nodes: together they must find room
        need = group.total()
    else:
        need = {key: value for key, value in (("CPU", cfg.cpus_per_trial), ("GPU", cfg.gpus_per_trial))
                if value > 0}

    def alive_nodes() -> list[dict]:
        return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]

    def fits(nodes: list[dict]) -> bool:
        if group.spread:
            return worker_slots(nodes, group.worker_bundle()) >= group.count
        return any(all(res.get(key, 0) >= value for key, value in need.items()) for res in nodes)

    nodes = alive_nodes()
    if fits(nodes):
        return
    if cfg.address and not cfg.wait_for_nodes and node_wait_s > 0:
        say(f"no node has {_format_resources(need)} for one trial yet; waiting up to "
            f"{node_wait_s:.0f}s for nodes to join")
        end = time.time() + node_wait_s
        while time.time() < end:
            time.sleep(2.0)
            nodes = alive_nodes()
            if fits(nodes):
                return
    if cfg.address and cfg.wait_for_nodes:
        say(f"note: no node has {_format_resources(need)} for one trial yet; waiting for the "
            f"autoscaler to add one (--wait-for-nodes)")
        return
    try:  # the autoscaler's limits, where Ray publishes them (autoscaler v2, e.g. KubeRay)
        ceiling = ray_internals.autoscaler_max_resources()
    except Exception:
        ceiling = {}
    if ceiling and all(ceiling.get(key, 0) >= value for key, value in need.items()):
        say(f"note: no node has {_format_resources(need)} for one trial yet; the autoscaler can "
            f"add one")
        return
    largest = max(nodes, key=lambda res: (res.get("GPU", 0), res.get("CPU", 0)), default={})
    where = f"the Ray cluster at --address {cfg.address}" if cfg.address else "the local Ray"
    if group.spread:
        slots = worker_slots(nodes, group.worker_bundle())
        raise ConfigError(
            f"{where} cannot run a trial: one trial trains on {group.count} workers (--workers-per-"
            f"trial) of {_format_resources(group.worker_bundle())} each, and its {len(nodes)} "
            f"node(s) hold room for {slots} such worker(s). Trials would wait forever for "
            f"resources that never come. Lower --workers-per-trial (or --gpus-per-trial) or "
            f"--cpus-per-trial (CPUs per worker)"
            + (", add nodes, or, if an autoscaler will add them, pass --wait-for-nodes." if cfg.address
               else ", or join a bigger Ray cluster with --address."))
    fix = ("Lower --cpus-per-trial / --gpus-per-trial, add a node that has them, or, if an "
           "autoscaler will add such nodes, pass --wait-for-nodes." if cfg.address else
           "Lower --cpus-per-trial / --gpus-per-trial.")
    raise ConfigError(
        f"no node of {where} can run a trial: one trial needs {_format_resources(need)}, and the "
        f"largest of its {len(nodes)} node(s) has {_format_resources(largest)}. Trials would wait "
        f"forever for resources that never come. {fix}")


def worker_slots(nodes: list[dict], bundle: dict[str, float]) -> int:
    """How many workers that each ask for ``bundle`` fit on ``nodes`` (their total resources)."""
    return sum(min(math.floor(res.get(key, 0) / value + 1e-9) for key, value in bundle.items())
               for res in nodes)


def trials_at_once(cfg: SweepConfig) -> Optional[int]:
    """Ray Tune's ``max_concurrent_trials``: --max-concurrent, and for trials over several
    workers no more than the alive nodes hold the workers of. Ray Train V2 places those outside
    Ray Tune's resource accounting (a spread trial itself reserves no CPU, see
    ``WorkerGroup.trial_resources``), so Ray Tune alone would start every trial at once, each
    holding a search suggestion while its trainer waits for workers. With --wait-for-nodes the
    nodes still to come count too, so the cap stays --max-concurrent: waiting trainers are what
    asks the autoscaler for nodes."""
    import ray

    group = cfg.worker_group
    if not group.spread or (cfg.address and cfg.wait_for_nodes):
        return cfg.max_concurrent
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    room = max(1, worker_slots(nodes, group.worker_bundle()) // group.count)
    if cfg.max_concurrent is not None and cfg.max_concurrent <= room:
        return cfg.max_concurrent
    say(f"each trial trains on {group.count} workers of {_format_resources(group.worker_bundle())}: "
        f"at most {room} trial(s) at once, what Ray's nodes hold")
    return room


def _init_ray(cfg: SweepConfig) -> None:
    """Start this sweep's own Ray (no --address) or join the cluster at --address, then check
    what a cluster needs: a store every node's trials can reach and shared storage."""
    import ray

    if ray.is_initialized():
        return
    if cfg.address:
        address = credentials.reveal(cfg.address)
        if credentials.MASK in address:  # read back from saved state, its password masked
            raise ConfigError(f"the sweep's saved --address {address} had a password, which "
                              f"tunebert never saves; pass it again: --address "
                              f"{address.replace(credentials.MASK, 'PASSWORD')}")
        try:
            ray.init(address=address, **console.ray_settings()["init"])
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"could not join the Ray cluster at --address {cfg.address!r} "
                              f"({str(exc).splitlines()[0][:200]}). Check that `ray start --head` "
                              f"runs there and the address/port, or leave --address out to run "
                              f"locally.") from None
        check_joined_cluster(cfg)
        check_shared_storage(cfg)
    else:
        # Without --address the sweep starts its own Ray, always: address="local" never joins
        # $RAY_ADDRESS or a `ray start` cluster on this machine (which `ray.init()` would do
        # silently, skipping the checks above). RAY_ADDRESS is dropped so nothing in this process
        # or its Ray workers connects there either.
        ignored = os.environ.pop("RAY_ADDRESS", None)
        if ignored:
            ignored = tracking.redact(ignored)  # a ray:// address may carry credentials
            say(f"note: RAY_ADDRESS={ignored} is set, but without --address the sweep starts its own "
                f"Ray on this machine and ignores it; pass --address auto (or --address {ignored}) "
                f"to run on that cluster")
        # An embedded Ray serves this process only, so none of its servers (GCS, raylet, workers)
        # should listen beyond the loopback interface. Ray's own switch for that is single-node
        # mode; it is read from the environment at import time, hence both lines.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray_internals.set_multi_node(os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] not in ("0", "false", "False"))
        ray.init(address="local", include_dashboard=False, dashboard_host="127.0.0.1",
                 **console.ray_settings()["init"])


def check_joined_cluster(cfg: SweepConfig) -> None:
    """``check_tracking_target`` for the cluster actually joined: ``--address auto`` (or
    $RAY_ADDRESS) is only known once joined, and must meet the same rule as an explicit address."""
    import ray

    joined = ray.get_runtime_context().gcs_address
    try:
        check_tracking_target(dataclasses.replace(cfg, address=joined), cfg.resolved_tracking_uri())
    except ConfigError as exc:
        if joined == cfg.address:
            raise
        raise ConfigError(f"--address {cfg.address} joined the Ray cluster at {joined}: {exc}") from None


def check_shared_storage(cfg: SweepConfig) -> None:
    """On a cluster, every alive node must see the sweep's storage folder (checkpoints are
    written by the node that runs a trial and read by whichever node resumes it).

    Nodes that join later (an autoscaler adding workers, as docker/cluster.yaml starts with none)
    cannot be probed now: every trial checks the folder again on the node it lands on
    (``trainables.entry.check_storage_visible``) and fails at once, before training, when that
    node cannot see it. When this node is the only one alive, the check here proves nothing, and
    the sweep says so."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        where = nodes[0].get("NodeManagerAddress", "?") if nodes else "?"
        say(f"warning: only one Ray node is alive ({where}), so --storage {cfg.ray_storage} could "
            f"not be checked against other nodes. Nodes that join later are checked by each trial "
            f"on the node it runs on: a trial on a node that cannot see this folder fails at its "
            f"start with that message (retried up to --max-failures times, possibly elsewhere). "
            f"Use a folder every node mounts at the same path (NFS, EFS, a ReadWriteMany volume).")
        return
    cfg.ray_storage.mkdir(parents=True, exist_ok=True)
    probe = cfg.ray_storage / f".tunebert-probe-{uuid.uuid4().hex}"
    probe.write_text("visible")

    @ray.remote(num_cpus=0)
    def sees(path: str) -> bool:
        import os

        return os.path.exists(path)

    try:
        checks = {n["NodeID"]: sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(str(probe)) for n in nodes}
        blind = [node for node, ref in checks.items() if not ray.get(ref, timeout=60)]
    finally:
        probe.unlink(missing_ok=True)
    if blind:
        raise ConfigError(
            f"--storage {cfg.storage} ({cfg.ray_storage}) is not shared: {len(blind)} of {len(nodes)} "
            f"Ray nodes cannot see it (node ids {[b[:12] for b in blind]}). Trials checkpoint there and "
            f"resume on any node, so use a folder every node mounts at the same path (NFS, EFS, a "
            f"Kubernetes ReadWriteMany volume).")
