"""Vigil: host security monitoring with CO-RE eBPF."""

__version__ = "0.1.0"
