"""The resident app's screens: one module per screen, each a ``build(app)`` returning
its control; shared pieces in :mod:`resident_app.screens.parts`."""
