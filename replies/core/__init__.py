"""The core layer: promises, barrier, correlation table, wire codec.

No I/O happens here and nothing here imports ``kafka``: every piece is
tested with plain threads.
"""
