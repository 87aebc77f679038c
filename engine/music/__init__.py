"""The music itself, no torch: notes and pieces, MIDI and notation I/O, the catalog, keys, metrics."""
