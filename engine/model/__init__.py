"""The model (torch): events, the seq2seq network, checkpoints, the corpus, generation, training.

Importing this package imports no torch; its modules do.
"""
