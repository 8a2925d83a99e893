"""rbdpy: an RBD-style network block device, served over NBD by nbdkit."""

import logging as _logging

# quiet by default: the daemons and the CLI install a handler (rbdpy.log.setup)
_logging.getLogger("rbdpy").addHandler(_logging.NullHandler())
