"""One engine's handling of request images: expands placeholders, checks counts, and runs the
model's vision tower in-process when no encoder stage sent the features."""

from __future__ import annotations

from typing import Any

from tideflow.models.image_spec import IMAGE_FIELD, ImagePromptSpec
from tideflow.runtime.engine.core.images import ImageInputs, check_images, expand_image_tokens, image_hash


class PromptImages:
    """One engine's handling of request images: expands placeholders, checks counts, and
    encodes images in-process when no encoder stage sent their features."""

    def __init__(self, hf_config: Any, model: Any, model_path: str, trust_remote_code: bool = False):
        self.spec = ImagePromptSpec.from_config(hf_config)
        self.model = model
        self.model_path = model_path
        self.trust_remote_code = trust_remote_code
        self.architecture = type(model).__name__
        self.encoder = None  # tideflow.models.vision.ImageEncoder, built on the first image
        self.num_encoded = 0  # images this engine encoded itself

    def prepare(self, ids: list[int], images: Any, features: list | None = None) -> tuple[list[int], ImageInputs | None]:
        """The prompt with its image placeholders expanded, and its `ImageInputs` (None without
        images; features still None unless given). Raises ValueError naming the field: images
        for a text-only model, placeholders that do not match the images, wrong feature shapes."""
        images = check_images(images)
        if self.spec is None:
            if images:
                raise ValueError(f"{IMAGE_FIELD}: the model ({self.architecture}) takes no images")
            return ids, None
        ids, spans = expand_image_tokens(ids, self.spec, len(images))
        if not images:
            return ids, None
        if features is not None:
            features = self._check_features(features, len(images))
        return ids, ImageInputs([image_hash(image) for image in images], spans, features)

    def _check_features(self, features: list, num_images: int) -> list:
        import torch

        if len(features) != num_images:
            raise ValueError(f"{IMAGE_FIELD}: {len(features)} image features for {num_images} images")
        out = [torch.as_tensor(f) for f in features]
        for i, f in enumerate(out):
            if f.dim() != 2 or f.shape[0] != self.spec.tokens_per_image:
                raise ValueError(
                    f"{IMAGE_FIELD}: features of image {i} have shape {tuple(f.shape)}; expected "
                    f"[{self.spec.tokens_per_image}, hidden]"
                )
        return out

    def encode(self, inputs: ImageInputs | None, images: Any) -> None:
        """Fill in `inputs.features` by running the model's vision tower on `images`, unless
        an encoder stage already sent them."""
        if inputs is None or inputs.features is not None:
            return
        if self.encoder is None:
            from tideflow.models.vision import ImageEncoder

            self.encoder = ImageEncoder.for_model(self.model, self.model_path, self.trust_remote_code)
        images = check_images(images)
        inputs.features = self.encoder.encode(images)
        self.num_encoded += len(images)
