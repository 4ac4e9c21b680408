"""Field protocol codecs: pure functions from bytes to typed frames and back.

One module per protocol (``cjt188`` for CJ/T 188-2004 meters); no I/O, no database and
no clock in any of them, so the simulator, the worker and ``shuiwu frame`` share them.
How to add a vendor's model or another protocol: ``docs/drivers.md``.
"""
