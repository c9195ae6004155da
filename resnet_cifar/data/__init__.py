"""CIFAR-10 data: sources on disk, download, split, and the tensor and DALI loaders."""
