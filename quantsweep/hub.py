"""Hugging Face hub access: offline switches, a reachability probe, and the mirror.

Everything that asks "may we, and can we, reach the hub?" lives here, so datasets and
calibration text make the same decision: ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``
mean no network; a user-set ``HF_ENDPOINT`` mirror always wins.

Example:
    >>> import os
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}):
    ...     hub_offline(), hub_reachable()
    (True, False)
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 3.0  # one TCP connect; datasets' own retries take minutes on a closed network
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def hub_offline() -> bool:
    """Whether the user marked the hub offline (``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` true).

    Example:
        >>> import os
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"HF_DATASETS_OFFLINE": "yes"}):
        ...     hub_offline()
        True
    """
    return any(os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE") for var in _OFFLINE_VARIABLES)


def effective_hub_endpoint(endpoint: str | None = None) -> str | None:
    """The hub mirror in effect: the user's ``HF_ENDPOINT`` if set, else ``endpoint``, else None.

    Example:
        >>> import os
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ):
        ...     _ = os.environ.pop("HF_ENDPOINT", None)
        ...     effective_hub_endpoint("https://hf-mirror.example")
        'https://hf-mirror.example'
        >>> with mock.patch.dict(os.environ, {"HF_ENDPOINT": "https://my-mirror.example"}):
        ...     effective_hub_endpoint("https://hf-mirror.example")
        'https://my-mirror.example'
    """
    return os.environ.get("HF_ENDPOINT") or endpoint or None


def use_hub_mirror(endpoint: str) -> str:
    """Point ``huggingface_hub`` and ``datasets`` at a hub mirror, unless the user set ``HF_ENDPOINT``.

    A user-set ``HF_ENDPOINT`` always wins and is never overwritten. Both libraries
    read the variable when first imported, so when they are already imported their
    module-level endpoint constants are updated as well.

    Returns:
        the endpoint in effect.

    Example:
        >>> import os, sys
        >>> from unittest import mock
        >>> import huggingface_hub.constants as hub_constants
        >>> with (
        ...     mock.patch.dict(os.environ),  # HF_ENDPOINT is restored afterwards
        ...     mock.patch.object(hub_constants, "ENDPOINT"),
        ...     mock.patch.dict(sys.modules, {"datasets.config": None}),  # as if datasets were not imported
        ... ):
        ...     _ = os.environ.pop("HF_ENDPOINT", None)
        ...     print(use_hub_mirror("https://hf-mirror.example/"), os.environ["HF_ENDPOINT"], hub_constants.ENDPOINT)
        https://hf-mirror.example https://hf-mirror.example https://hf-mirror.example
        >>> with mock.patch.dict(os.environ, {"HF_ENDPOINT": "https://my-mirror.example"}):
        ...     use_hub_mirror("https://hf-mirror.example")  # the user's mirror wins
        'https://my-mirror.example'
    """
    if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
        raise ValueError(f"hub endpoint must be an http(s) URL, got {endpoint!r}")
    user = os.environ.get("HF_ENDPOINT")
    if user:
        if user.rstrip("/") != endpoint.rstrip("/"):
            logger.warning("HF_ENDPOINT=%s is set; keeping it rather than %s", user, endpoint)
        return user
    endpoint = endpoint.rstrip("/")
    os.environ["HF_ENDPOINT"] = endpoint
    hub_constants = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None:
        hub_constants.ENDPOINT = endpoint
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_ENDPOINT = endpoint
        datasets_config.HUB_DATASETS_URL = endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"
    return endpoint


def hub_reachable(endpoint: str | None = None, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub (or the user's ``HF_ENDPOINT`` mirror) answers a TCP connect.

    Offline switches (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``) answer False without
    touching the network; otherwise one connection attempt with a short time-out, so a
    closed network is found in seconds instead of after datasets' retries.

    Example:
        >>> import os
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}):
        ...     hub_reachable()  # answered without touching the network
        False
    """
    import socket
    from urllib.parse import urlparse

    if hub_offline():
        return False
    url = urlparse(effective_hub_endpoint(endpoint) or DEFAULT_ENDPOINT)
    port = url.port or (443 if url.scheme != "http" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout_s):
            return True
    except OSError:
        return False
