"""Search decoders: (diverse) beam search, DeAL reward-guided search, best-of-N, and their rewards."""
