"""One folder per cloud (local, gce, ec2): its descriptor (cloud.py), provider, store and the
pieces its VMs run; registry.py lists them. Nothing here is imported by a VM but the pieces
it runs, so this package's own files stay empty."""
