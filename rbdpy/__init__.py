"""rbdpy: an RBD-style network block device, served over NBD by nbdkit."""

import logging as _logging

# quiet by default: the daemons and the CLI install a handler (rbdpy.log.setup)
_logging.getLogger("rbdpy").addHandler(_logging.NullHandler())


def connect(cluster: str | None = None, *, pool: str = "rbd"):  # noqa: ANN201
    """Connect to a cluster: ``rbdpy.connect().open_image("disk0")`` (see rbdpy.client.rados)."""
    from rbdpy.client.rados import connect as _connect

    return _connect(cluster, pool=pool)
