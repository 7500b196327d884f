"""The model: convolutional autoencoder, its training job, registry and scorer."""

from pipeline.model import quiet as _quiet

# Before any module of the package imports TensorFlow (most do so lazily).
_quiet.install()
