"""The Keras 3 MSA models (baseline MSAModel, ImprovedMSAModel), build_model, checkpoints, the training recipe and the MMSA metrics."""
