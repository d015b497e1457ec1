"""Multimodal pipeline: text, images, audio and video as tokens of one Transformer."""
