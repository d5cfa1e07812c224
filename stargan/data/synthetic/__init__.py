"""The synthetic embedded dataset: procedural faces in the real CelebA and RaFD formats.

CelebA-like images are "in the wild" (random scale, rotation, placement, cluttered
background) with 5 landmarks; RaFD-like images are frontal studio shots already framed like
the aligned faces. Every image's parameters are stored next to it, so the pipeline can render
the true counterfactual of any translation (:func:`counterfactual` + :func:`render`).
"""
from stargan.data.synthetic.face import (CELEBA_ATTRIBUTES, CELEBA_LIST_ATTRIBUTES, HAIR_COLOURS,
                                         RAFD_EXPRESSIONS, FaceParams, counterfactual, landmarks)
from stargan.data.synthetic.render import render
from stargan.data.synthetic.writers import write_celeba_like, write_rafd_like

__all__ = ["CELEBA_ATTRIBUTES", "CELEBA_LIST_ATTRIBUTES", "HAIR_COLOURS", "RAFD_EXPRESSIONS", "FaceParams",
           "counterfactual", "landmarks", "render", "write_celeba_like", "write_rafd_like"]
