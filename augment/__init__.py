"""Data in: the msa-tf2 HDF5 dataset layer, validation, the synthetic MOSI-like generator, MMSA import, augmentation transforms and the tf.data pipeline."""
