"""Instruments that measure the code rather than the model's quality: reads back to the host."""
