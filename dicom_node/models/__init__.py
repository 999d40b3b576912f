"""The models: their common result type, the HU threshold baseline, and (with the
``inference`` extra) the trained networks.

Importing this package imports no torch; each network module does so itself.
"""
