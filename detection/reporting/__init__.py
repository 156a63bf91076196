"""What a run leaves for people to look at: drawn detections, plots, debug images."""
