"""The payer's pages over HTTP (``http.py``): the routes of :mod:`backend.payments.online.pages`
and the static QR downloads of :mod:`backend.payments.online.static_qr`. A package of its
own because only a module named ``http.py`` may speak Starlette (tests/test_layers.py)."""
