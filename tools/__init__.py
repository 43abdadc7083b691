"""Maintainer tools for qemu-migcompat (not installed with the package)."""
