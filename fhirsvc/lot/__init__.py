"""Line-of-therapy engine: drug eras → regimens → numbered lines with start, end and end reason."""
