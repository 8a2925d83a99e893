"""rbdpy: an RBD-style network block device, served over NBD by nbdkit."""
