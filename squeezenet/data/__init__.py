"""Datasets: ImageNet validation folders with a synset mapping, and labelled image folders."""
from .imagenet import ImageNetFolder, read_synset_mapping

__all__ = ["ImageNetFolder", "read_synset_mapping"]
