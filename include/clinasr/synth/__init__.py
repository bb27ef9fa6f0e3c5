"""Synthetic clinical speech data: lexicon, transcripts, TTS, augmentation, manifests."""
