"""The Ray backend: one Ray task per work unit (a model and a chunk of its recipes) on one accelerator.

Ray is the scheduler; quantsweep does not build one. Each unit asks Ray for one
accelerator (``device.ray_resources``: ``{"NPU": 1}`` on Ascend, ``num_gpus=1`` on CUDA,
else CPUs), loads its model once, restores the full-precision weights between recipes
and writes every cell into the shared store as soon as it is finished
(:func:`quantsweep.sweep.cell.run_unit`, the same function the local backend runs).
Workers only evaluate; the driver follows the store, shows progress over cells with
where each ran (host, device), and judges from the store.

Faults:

* **A worker that dies** (kill -9, the OOM killer) is retried by Ray (``max_retries``).
  The retry skips the cells its predecessor already stored and takes over the claims
  of the dead worker, so nothing is lost or computed twice.
* **A cell that raises** is stored as a failed cell by ``run_unit``; the task itself is
  never retried for an exception (``retry_exceptions=False``). A unit that still fails
  (retries spent, or an error outside any cell) has its missing cells stored as failed
  cells by the driver, with the error.
* **The driver dies:** its tasks are cancelled by Ray with the driver's job (non-detached
  tasks die with their driver, on a local Ray and on a ``ray start`` cluster alike).
  Cells already stored stay; running the command again resumes from the store.
* **An address with no cluster** is a clear error within seconds (a TCP probe of the
  GCS port first, then a bounded wait for Ray's handshake).

Example:
    >>> # not run here: needs a Ray cluster at that address (tests/sweep/test_ray_backend.py starts a local one)
    >>> summaries = run_ray(plan, UnitContext.from_plan(plan, "out"), address="10.0.0.1:6379")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

from quantsweep.sweep.plan import WorkUnit, group_units

logger = logging.getLogger(__name__)

RAY_INSTALL_HINT = "the Ray backend needs Ray: pip install 'quantsweep[ray]'"
PROBE_TIMEOUT_S = 3.0  # TCP connect to the head's GCS port
CONNECT_TIMEOUT_S = 30.0  # Ray's own handshake once the port answers
POLL_S = 1.0  # how often the driver looks at the store
MAX_RETRIES = 3  # Ray retries of a unit whose worker died
_RESOURCE_NAMES = {"npu": "NPU", "cuda": "GPU", "cpu": "CPU"}


class RayNotInstalledError(ImportError, ValueError):
    """Ray is not installed; a user error (the CLI exits 2) that names the extra to install.

    Example:
        >>> issubclass(RayNotInstalledError, ValueError) and issubclass(RayNotInstalledError, ImportError)
        True
    """


def import_ray():
    """Import Ray, or fail with the extra to install.

    Raises:
        RayNotInstalledError: Ray is not installed (the message names ``quantsweep[ray]``).

    Example:
        >>> import_ray().__name__
        'ray'
    """
    try:
        import ray
    except ImportError as error:
        raise RayNotInstalledError(f"{RAY_INSTALL_HINT} ({error})") from None
    return ray


# ---------------------------------------------------------------------- connecting
def _host_port(address: str) -> tuple[str, int]:
    text = address.strip()
    for prefix in ("ray://", "http://", "https://"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(
            f"--address {address!r} is not HOST:PORT (for example 10.0.0.1:6379, "
            "the address `ray start --head` prints), nor 'auto'"
        )
    return host.strip("[]"), int(port)


def probe_address(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Check that something listens at a Ray address, within ``timeout_s`` seconds.

    ``ray.init`` retries an unreachable address for a minute or more; this answers in seconds.

    Raises:
        ValueError: the address is malformed or nothing accepts a connection there.

    Example:
        >>> probe_address("127.0.0.1:1")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: no Ray cluster at '127.0.0.1:1': ...
    """
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as error:
        raise ValueError(
            f"no Ray cluster at {address!r}: cannot connect to {host}:{port} within {timeout_s:g} s ({error}). "
            "Start one with `ray start --head` and pass the address it prints; `ray status` on the head "
            "node shows it"
        ) from None


class _Deadline:
    """Raise TimeoutError in the main thread after ``seconds`` (SIGALRM; elsewhere a no-op)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.armed = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()

    def _expire(self, *_):
        raise TimeoutError

    def __enter__(self):
        if self.armed:
            self.previous = signal.signal(signal.SIGALRM, self._expire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)


def connect(address: str | None = None, *, timeout_s: float = CONNECT_TIMEOUT_S):
    """Join the Ray cluster at ``address`` (or reuse the one this process is connected to).

    ``None`` reuses a connection already made (``ray.init`` in this process), else
    follows Ray's own default: ``RAY_ADDRESS`` when set, otherwise a new local Ray on
    this machine's CPUs. ``"auto"`` joins a cluster started with ``ray start`` here.

    Raises:
        RayNotInstalledError: Ray is not installed (a ValueError and an ImportError).
        ValueError: nothing answers at ``address`` within seconds, or Ray refuses the
            connection (for example a missing or different auth token).

    Example:
        >>> # not run here: needs a Ray cluster with Ascend NPUs at that address
        >>> ray = connect("10.0.0.1:6379")  # doctest: +SKIP
        >>> ray.cluster_resources()["NPU"]  # doctest: +SKIP
        16.0
    """
    ray = import_ray()
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if address in (None, "auto") or _same_address(address, current):
            return ray
        raise ValueError(
            f"this process is already connected to the Ray cluster at {current}; it cannot also join {address!r}"
        )
    if address not in (None, "auto"):
        probe_address(address)
    try:
        with _Deadline(timeout_s):
            # workers' output (lm-eval's progress bars) would garble the driver's bar: it stays in
            # Ray's session logs, and every cell has its own log in the store
            ray.init(address=address, log_to_driver=False)
    except TimeoutError:
        raise ValueError(
            f"the Ray cluster at {address!r} accepted a connection but did not complete Ray's handshake "
            f"within {timeout_s:g} s: is it a Ray GCS port, the same Ray version, and (with Ray's token "
            "auth) the same ~/.ray/auth_token and RAY_AUTH_MODE=token on this machine?"
        ) from None
    except ConnectionError as error:
        raise ValueError(f"cannot join a Ray cluster at {address!r}: {error}") from None
    return ray


def _same_address(address: str, current: str) -> bool:
    try:
        host, port = _host_port(address)
        current_host, current_port = _host_port(current)
    except ValueError:
        return False
    if port != current_port:
        return False
    local = {"127.0.0.1", "localhost", socket.gethostname()}
    return host == current_host or (host in local and current_host in local | {_node_ip()})


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - only used to compare addresses
        return ""


# ---------------------------------------------------------------------- planning on the cluster
def cluster_device_kind(model, resources: dict | None = None) -> str:
    """The device kind a model's cells run on in the cluster: part of every cell key.

    A model whose spec names a device kind keeps it; ``auto`` takes what the cluster
    offers (NPU, then GPU, else CPU), not what the driver's own host has.

    Example:
        >>> from quantsweep.sweep.spec import ModelSpec
        >>> cluster_device_kind(ModelSpec(path="toy", device="auto"), {"CPU": 8.0, "NPU": 8.0})
        'npu'
    """
    from quantsweep.device import parse_device, ray_device_kind

    if resources is None:
        resources = import_ray().cluster_resources()
    kind = parse_device(model.device)[0]
    return ray_device_kind(resources) if kind == "auto" else kind


def planning_device_kinds(address: str | None = None) -> Callable[[Any], str]:
    """Join the cluster and return ``model -> device kind`` for planning cell keys.

    The driver plans before anything runs; on a cluster the device kind of a cell is
    the cluster's (a CPU-only head node plans NPU cells for NPU workers). Joining here,
    first, also makes ``--address`` with no cluster fail within seconds, before the
    driver fingerprints any checkpoint.

    Example:
        >>> # not run here: needs a Ray cluster with Ascend NPUs at that address
        >>> kind_of = planning_device_kinds("10.0.0.1:6379")  # doctest: +SKIP
        >>> kind_of(spec.models[0])  # doctest: +SKIP
        'npu'
    """
    resources = dict(connect(address).cluster_resources())
    return lambda model: cluster_device_kind(model, resources)


def slots(kind: str, resources: dict, cpus_per_unit: int = 1) -> int:
    """How many units of ``kind`` the resources hold at once (one accelerator, or CPUs, each).

    Example:
        >>> slots("npu", {"CPU": 192.0, "NPU": 16.0})
        16
        >>> slots("cpu", {"CPU": 2.0}, cpus_per_unit=1)
        2
    """
    amount = float(resources.get(_RESOURCE_NAMES[kind], 0.0))
    return int(amount // cpus_per_unit) if kind == "cpu" else int(amount)


def _run_unit_on_worker(unit: WorkUnit, context) -> list[dict[str, Any]]:
    """The Ray task: run one unit on the device Ray granted this worker."""
    import ray

    from quantsweep.device import worker_device
    from quantsweep.sweep.cell import run_unit

    ids = ray.get_runtime_context().get_accelerator_ids()
    return run_unit(unit, context, device=worker_device(ids))


# ---------------------------------------------------------------------- the driver
def run_ray(
    plan,
    context,
    progress=None,
    *,
    address: str | None = None,
    on_cell: Callable[[dict], None] | None = None,
    cpus_per_unit: int = 1,
    max_retries: int = MAX_RETRIES,
    poll_s: float = POLL_S,
) -> list[dict[str, Any]]:
    """Run the plan's cells as Ray tasks, one per work unit, and follow them through the store.

    Args:
        plan: the :class:`~quantsweep.sweep.plan.SweepPlan` (its ``to_run`` cells are run).
        context: the :class:`~quantsweep.sweep.context.UnitContext`; its store folder must be
            on a filesystem every node sees at the same path.
        progress: a :class:`~quantsweep.sweep.progress.CellProgress`, told of every cell
            as it lands in the store, with the host and device it ran on.
        address: the cluster (``HOST:PORT``, ``auto``, or None: see :func:`connect`).
        on_cell: called with each stored cell's summary (the driver rebuilds the derived
            files and judges there).
        cpus_per_unit: CPUs per unit when the cells run on CPUs.
        max_retries: Ray retries of a unit whose worker died.
        poll_s: how often the store is read for finished cells.

    Returns:
        The summary (key, status, model, recipe, task, error, ran_on, stage) of every
        cell of ``plan.to_run`` stored during this call, in the order they landed.

    Raises:
        RayNotInstalledError: Ray is not installed (a ValueError and an ImportError).
        ValueError: no cluster at ``address``, or a cluster without the device kind the
            cells need: before anything runs.

    Example:
        >>> # not run here: needs a Ray cluster with Ascend NPUs (tests/sweep/test_ray_backend.py runs one on CPUs)
        >>> run_ray(plan, context, address="auto")[0]["ran_on"]  # doctest: +SKIP
        {'host': 'node-3', 'pid': 4711, 'device': 'npu:0'}
    """
    from quantsweep.sweep.store import CellStore

    ray = connect(address)
    cells = list(plan.to_run)
    if not cells:
        return []
    total, free = ray.cluster_resources(), ray.available_resources()
    kinds = {cell.model.name: cluster_device_kind(cell.model, total) for cell in cells}
    units = group_units(cells, _slots_per_model(kinds, total, cpus_per_unit))
    _check_capacity(units, kinds, total, free, cpus_per_unit)
    task = ray.remote(_run_unit_on_worker)
    refs = {}
    for unit in units:  # baselines first: group_units lists every model's first unit first
        options = _resources(kinds[unit.model.name], cpus_per_unit)
        ref = task.options(max_retries=max_retries, retry_exceptions=False, name=_unit_name(unit), **options)
        refs[ref.remote(unit, context)] = unit
    logger.info("submitted %d Ray tasks (units) for %d cells", len(refs), len(cells))
    follower = _StoreFollower(CellStore(context.store_dir), cells, context, progress, on_cell)
    try:
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=poll_s)
            for ref in ready:
                _collect(ray, ref, refs[ref], follower)
            follower.poll()
        follower.poll()
    except BaseException:
        for ref in refs:  # an interrupted driver takes its tasks with it rather than orphaning them
            ray.cancel(ref, force=True)
        raise
    return follower.summaries


def _slots_per_model(kinds: dict[str, str], total: dict, cpus_per_unit: int) -> dict[str, int]:
    per_kind: dict[str, list[str]] = {}
    for name, kind in kinds.items():
        per_kind.setdefault(kind, []).append(name)
    shares = {}
    for kind, names in per_kind.items():
        available = max(1, slots(kind, total, cpus_per_unit))
        for name in names:
            shares[name] = max(1, available // len(names))
    return shares


def _resources(kind: str, cpus_per_unit: int) -> dict[str, Any]:
    from quantsweep.device import ray_resources

    return ray_resources(kind, cpus_per_unit)


def _unit_name(unit: WorkUnit) -> str:
    return f"quantsweep:{unit.model.name}:{'+'.join(r.name for r in unit.recipes)}"[:200]


def _check_capacity(units: list[WorkUnit], kinds: dict[str, str], total: dict, free: dict, cpus_per_unit: int) -> None:
    """Refuse a device kind the cluster lacks; say when units must wait for free accelerators."""
    wanted: dict[str, int] = {}
    for unit in units:
        kind = kinds[unit.model.name]
        wanted[kind] = wanted.get(kind, 0) + 1
    for kind, count in wanted.items():
        name = _RESOURCE_NAMES[kind]
        have, idle = slots(kind, total, cpus_per_unit), slots(kind, free, cpus_per_unit)
        unit_word = f"{cpus_per_unit} CPU(s)" if kind == "cpu" else f"one {name}"
        if have == 0:
            raise ValueError(
                f"the Ray cluster offers no {name} resource but {count} unit(s) need {unit_word} each "
                f"(its resources: {_describe(total)}); on Ascend nodes check that `ray status` lists NPU, "
                "or set the models' device to cpu"
            )
        if count > idle:
            logger.warning(
                "%d unit(s) ask for %s each; the cluster has %d %s, %d free now: %d unit(s) wait until one is free",
                count,
                unit_word,
                int(total.get(name, 0)),
                name,
                int(free.get(name, 0)),
                count - idle,
            )


def _describe(resources: dict) -> str:
    shown = {k: v for k, v in resources.items() if k in ("CPU", "GPU", "NPU")}
    return ", ".join(f"{k} {v:g}" for k, v in sorted(shown.items())) or "none"


def _collect(ray, ref, unit: WorkUnit, follower: _StoreFollower) -> None:
    """Take a finished task's outcome; a unit that failed as a whole gets its missing cells recorded."""
    try:
        ray.get(ref)
    except Exception as error:  # noqa: BLE001 - RayTaskError, WorkerCrashedError, OutOfMemoryError...
        logger.error("unit %s failed: %s", _unit_name(unit), error)
        follower.fail_missing(unit, error)


class _StoreFollower:
    """Watches the store for the plan's cells and reports each once as it lands."""

    def __init__(self, store, cells: list, context, progress, on_cell):
        self.store, self.context, self.progress, self.on_cell = store, context, progress, on_cell
        self.waiting = {cell.key: cell for cell in cells}
        self.summaries: list[dict[str, Any]] = []

    def poll(self) -> None:
        from quantsweep.sweep.records import cell_summary

        for key in [k for k in self.waiting if self.store.is_settled(k, self.context)]:
            record = self.store.read_cell(key)
            if record is None:
                continue
            del self.waiting[key]
            summary = cell_summary(record)
            self.summaries.append(summary)
            logger.info(
                "cell %s/%s/%s %s on %s",
                summary["model"],
                summary["recipe"],
                summary["task"],
                summary["status"],
                _where(summary.get("ran_on")) or "?",
            )
            if self.on_cell is not None:
                self.on_cell(summary)
            if self.progress is not None:
                self.progress.finished(summary["status"], _where(summary.get("ran_on")))
        if self.progress is not None:
            self.progress.running(sum(1 for key in self.waiting if self.store.claim_owner(key) is not None))

    def fail_missing(self, unit: WorkUnit, error: BaseException) -> None:
        from quantsweep.sweep.claims import store_failed_cells

        self.poll()
        missing = [c.key for c in unit.cells if c.key in self.waiting and self.store.claim_owner(c.key) is None]
        store_failed_cells(unit, self.context, missing, "running on Ray", error)


def _where(ran_on: dict | None) -> str | None:
    if not ran_on:
        return None
    return " ".join(str(ran_on[k]) for k in ("host", "device") if ran_on.get(k))
