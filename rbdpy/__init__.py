"""rbdpy: an RBD-style network block device, served over NBD by nbdkit."""

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
