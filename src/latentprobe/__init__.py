"""latentprobe: how much does an autoencoder's hidden layer know about the image?"""

__version__ = "0.1.0"
