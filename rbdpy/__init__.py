"""rbdpy: an RBD-style network block device, served over NBD by nbdkit.

Two Python APIs over the same images: ``rbdpy.connect`` / ``rbdpy.open_image`` (rbdpy's
own, see ``rbdpy.rbd.api``), and the shape of Ceph's bindings, so a python-rbd script runs
by changing its imports (``import rbdpy as rados``, ``import rbdpy as rbd``):
``rbdpy.Rados``, ``rbdpy.RBD``, ``rbdpy.Image``, their constants and exceptions
(``rbdpy.client.pyrados``, ``rbdpy.rbd.pyrbd``, ``rbdpy.binding_errors``). Those names
load on first use, so ``import rbdpy`` stays cheap.
"""

import logging as _logging

# quiet by default: the daemons and the CLI install a handler (rbdpy.log.setup)
_logging.getLogger("rbdpy").addHandler(_logging.NullHandler())


def connect(cluster: str | None = None, *, pool: str = "rbd"):
    """Connect to a cluster (a ``rbdpy.client.rados.Rados``): objects, and images through
    ``rbdpy.open_image(cluster, "disk0")``."""
    from rbdpy.client.rados import connect as _connect

    return _connect(cluster, pool=pool)


def open_image(cluster, name: str, *, read_only: bool = False, writeback: bool = True):
    """Open an image on a connected cluster (see rbdpy.rbd.api.open_image)."""
    from rbdpy.rbd.api import open_image as _open_image

    return _open_image(cluster, name, read_only=read_only, writeback=writeback)


def _lazy() -> dict[str, str]:
    """Name → module, for the names of Ceph's bindings."""
    import importlib

    errors = importlib.import_module("rbdpy.binding_errors")  # tiny: no cluster code
    names = dict.fromkeys(errors.__all__, "rbdpy.binding_errors")
    names.update(Rados="rbdpy.client.pyrados", Ioctx="rbdpy.client.pyrados")
    names.update(dict.fromkeys(
        ["RBD", "Image", "RBD_FEATURE_LAYERING", "RBD_FEATURE_STRIPINGV2",
         "RBD_FEATURE_EXCLUSIVE_LOCK", "RBD_FEATURE_OBJECT_MAP", "RBD_FEATURE_FAST_DIFF",
         "RBD_FEATURE_DEEP_FLATTEN", "RBD_FEATURE_JOURNALING", "RBD_FEATURE_DATA_POOL",
         "RBD_FEATURES_SUPPORTED", "LIBRADOS_OP_FLAG_FADVISE_FUA"], "rbdpy.rbd.pyrbd"))
    return names


def __getattr__(name: str):
    module = _lazy().get(name)
    if module is None:
        raise AttributeError(f"module 'rbdpy' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_lazy()])
