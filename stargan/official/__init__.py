"""The officially released StarGAN (v1) and StarGAN v2 networks, imported as ordinary models of ours.

``sources``: where each released file comes from and what it holds; ``convert``: reading an official
file (weights only) and mapping it onto our networks, refusing any that does not match; ``importer``:
the whole import (checkpoint, MLflow registered version, export) behind ``stargan import-official``.
No DVC stage imports this package: importing a model is a command a user runs once.
"""
