"""The error a bad sample raises, light (no torch), so that an entry point can name it before torch loads."""


class BadSample(ValueError):
    """A sample that cannot be read, checked or augmented: the message names its file and what to do."""


BAD_SAMPLE_ADVICE = ("dataset.on_bad_sample=skip leaves such samples out (counted and logged); "
                     "python -m detection.cli.inspect_data lists every bad file of a VOC-layout dataset")
