"""From the best trials to one predictor: candidate selection, combiners, export as one Keras model, evaluation against the best single."""
