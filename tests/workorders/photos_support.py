"""Photos as a phone makes them, with a GPS block in their EXIF."""

from __future__ import annotations

import io

import pillow_heif
from PIL import Image

from backend.workorders.photos import GPS_IFD

pillow_heif.register_heif_opener()
__all__ = ["GPS_IFD", "photo"]


def photo(fmt: str = "JPEG", size: tuple[int, int] = (800, 600), *, gps: bool = True) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "Apple"  # Make: stays
    if gps:
        exif[GPS_IFD] = {1: "N", 2: (31.0, 14.0, 0.0), 3: "E", 4: (121.0, 28.0, 0.0)}
    out = io.BytesIO()
    Image.new("RGB", size, "teal").save(out, format=fmt, exif=exif)
    return out.getvalue()
