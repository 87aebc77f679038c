"""Sound and pictures of a result: the synthesizer, loudness and encoding, the piano roll, the score."""
