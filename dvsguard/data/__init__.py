"""Event data: readers, CIFAR10-DVS listing, the synthetic dataset, framing and the frame cache.

Submodules are imported on demand (``from dvsguard.data.events import read_events``) so that
importing this package stays cheap.
"""
