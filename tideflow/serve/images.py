"""Images in chat messages: `image_url` content parts with `data:` URLs.

The server fetches nothing: an http(s) URL, a data URL that is not base64 or not an image,
or bytes Pillow cannot read are a 400 naming the part. A valid image travels on as its
encoded bytes (decoded again, and preprocessed, by the encoder stage).
"""

from __future__ import annotations

import base64
import binascii
import io

from tideflow.serve.errors import bad_request

MAX_IMAGE_BYTES = 20 << 20  # one decoded image
PARAM = "messages"  # the `param` of every image error


def image_from_url(url: str, field: str) -> bytes:
    """The encoded image of a `data:image/...;base64,...` URL; otherwise a 400 whose message
    names `field` (the part's path, e.g. `messages[0].content[1].image_url.url`) and whose
    `param` is "messages", like every other error inside a message."""
    if not url.startswith("data:"):
        scheme = url.split(":", 1)[0] if ":" in url else "a relative path"
        raise bad_request(
            f"'{field}' must be a data: URL (data:image/png;base64,...); fetching {scheme} URLs is not supported",
            PARAM, code="unsupported_parameter",
        )
    header, sep, payload = url[len("data:"):].partition(",")
    if not sep:
        raise bad_request(f"'{field}' is not a valid data: URL (no ',' before the data)", PARAM)
    media_type, *params = header.split(";")
    if "base64" not in params:
        raise bad_request(f"'{field}' must be base64-encoded (data:image/...;base64,...)", PARAM)
    if media_type and not media_type.startswith("image/"):
        raise bad_request(f"'{field}' has media type {media_type!r}; expected an image/* type", PARAM)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"'{field}' holds invalid base64 data", PARAM) from None
    if len(data) > MAX_IMAGE_BYTES:
        raise bad_request(f"'{field}' is larger than {MAX_IMAGE_BYTES >> 20} MiB", PARAM)
    _check_image(data, field)
    return data


def _check_image(data: bytes, field: str) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise bad_request(f"'{field}' is not an image Pillow can read: {exc}", PARAM) from None
