"""The model: convolutional autoencoder, its training job, registry and scorer."""
