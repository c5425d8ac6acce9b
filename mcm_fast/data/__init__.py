"""Training data: the shipped MNIST, image folders, .npz arrays and 2-D toys, with seeded resumable batching."""
from mcm_fast.data.batches import batch_indices, shard
from mcm_fast.data.images import ImageData, load_dataset, load_mnist

__all__ = ["ImageData", "batch_indices", "load_dataset", "load_mnist", "shard"]
