"""Measuring the suite: training steps timed part by part (:mod:`.steps`)."""
