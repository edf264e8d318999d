"""One real local Ray for every Ray test of the session (Ray has no local mode any more).

``ray_cluster`` starts ``ray.init(num_cpus=2)`` once (about 5-12 s on 2 cores) and yields
its GCS address, so a test can also start a driver in a subprocess that joins the same
cluster with ``--address``. Without ray installed the Ray tests are skipped, saying so;
CI installs it through the ``dev`` extra.
"""

import os

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'quantsweep[ray]' (CI: the dev extra)")
    # workers inherit the driver's environment: keep them offline and single-threaded
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    address = ray.get_runtime_context().gcs_address
    yield address
    if started_here:
        ray.shutdown()


@pytest.fixture(scope="session")
def local_reference(tmp_path_factory):
    """The toy sweep of ``ray_helpers.TOY_SPEC`` on the local backend: what every Ray run must reproduce.

    Returns ``(model, recipe, task, metric) -> (value, verdict)``.
    """
    from ray_helpers import TOY_SPEC, judged_rows

    import quantsweep

    out = tmp_path_factory.mktemp("local-reference")
    quantsweep.sweep(TOY_SPEC, out=out, backend="local", progress=False)
    return judged_rows(out)
