"""Local VMs: the facts every layer shares about them (domain.py, pure) and the libvirt engine (libvirt.py)."""
