"""Networks: encoder / decoder MLPs with context conditioning, likelihoods."""

from scfate.nn.autoencoder import MLP, Decoder, Encoder
from scfate.nn.likelihood import mse_loss, nb_nll

__all__ = ["MLP", "Encoder", "Decoder", "mse_loss", "nb_nll"]
