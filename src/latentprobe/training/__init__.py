"""Stage 3: training: the one epoch loop (engine), pretraining an autoencoder, fine-tuning a classifier."""
