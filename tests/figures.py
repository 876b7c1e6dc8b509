"""Checks on the figures the project writes: a PNG at a readable resolution with something drawn."""

import numpy as np


def assert_readable_png(path, min_dpi=100):
    """The PNG at ``path`` was saved at >= ``min_dpi`` and is not blank: its grey levels vary and
    more than a few percent of it is not background."""
    from PIL import Image
    with Image.open(path) as image:
        dpi = image.info.get("dpi")
        grey = np.asarray(image.convert("L"), dtype=np.float64)
    assert dpi and round(dpi[0]) >= min_dpi, f"{path}: {dpi} dpi"
    assert grey.std() > 10, f"{path}: blank (grey level std {grey.std():.1f})"
    assert (grey < 250).mean() > 0.03, f"{path}: almost nothing drawn"
