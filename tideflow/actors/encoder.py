"""The Encoder role: runs a multimodal model's vision tower and projector on the images of
tokenized requests and sends each request on with its image features beside the batch.

Rows pass through unchanged (TOKENIZED in, TOKENIZED out); the features of a row's images
ride as the attachment `features_key(request_id)`, a list of arrays [tokens_per_image,
hidden], one per image, which prefill merges at the image-token positions. Features are
cached by image content hash (an LRU of `encoder_cache_size` images), so a repeated image is
encoded once; upstream routes rows by their first image (`routing = "image"`) so that
repeats reach the replica that holds them. All images that miss the cache in one poll go
through the vision tower as one batch.

An image that cannot be decoded fails its request (the row's `error`), not the batch.
"""

from __future__ import annotations

import time

import pyarrow as pa

from tideflow.runtime.dataflow.role import Emission, StageContext, StageRole
from tideflow.actors.engine_role import features_key, set_threads
from tideflow.runtime.edges.rows import to_batch
from tideflow.runtime.edges import schemas
from tideflow.runtime.engine.feature_cache import FeatureCache
from tideflow.runtime.engine.core.images import IMAGE_FIELD, image_hash


class Encoder(StageRole):
    consumes = schemas.TOKENIZED
    produces = schemas.TOKENIZED
    needs_model = True
    routing = "image"
    requires_model = True
    takes_extra_options = False

    def __init__(self, context: StageContext):
        super().__init__(context)
        from tideflow.models.vision import ImageEncoder

        config = context.config
        set_threads(config)
        model = config.model
        self.encoder = ImageEncoder.load(
            model.model, dtype=model.dtype, device=config.engine.parallel.device,
            trust_remote_code=model.trust_remote_code,
        )
        self.cache = FeatureCache(config.stage.encoder_cache_size)
        self.pending: list[dict] = []  # rows pushed since the last poll
        self.num_images = 0  # image occurrences seen
        self.encode_s = 0.0  # seconds in the vision tower

    def push(self, batch: pa.RecordBatch, attachments=None) -> None:
        self.pending.extend(batch.to_pylist())

    def poll(self) -> list[Emission]:
        if not self.pending:
            return []
        rows, self.pending = self.pending, []
        hashes = {i: [image_hash(b) for b in row["images"]] for i, row in enumerate(rows) if row["images"] and not row["error"]}
        found, missing = self.cache.lookup([h for hs in hashes.values() for h in hs])
        self.num_images += sum(len(hs) for hs in hashes.values())
        data = {}
        for i, hs in hashes.items():
            for h, image in zip(hs, rows[i]["images"]):
                data.setdefault(h, image)
        failed = self._encode(missing, data, found)
        attachments = {}
        for i, hs in hashes.items():
            bad = next((j for j, h in enumerate(hs) if h in failed), None)
            if bad is not None:
                rows[i]["error"] = f"{IMAGE_FIELD}: image {bad} could not be encoded: {failed[hs[bad]]}"
                continue
            attachments[features_key(rows[i]["request_id"])] = [found[h] for h in hs]
        return [Emission(to_batch(rows, self.produces), attachments or None)]

    def _encode(self, keys: list[bytes], data: dict, found: dict) -> dict[bytes, str]:
        """Encode the images of `keys` (as one batch; one by one if the batch fails), adding
        their features to `found` and the cache. Returns key -> why, for images that failed."""
        from tideflow.models.vision import ImageDecodeError

        if not keys:
            return {}
        start = time.perf_counter()
        failed: dict[bytes, str] = {}
        try:
            outs = list(zip(keys, self.encoder.encode([data[k] for k in keys])))
        except ValueError:
            outs = []
            for k in keys:
                try:
                    outs.append((k, self.encoder.encode([data[k]])[0]))
                except ImageDecodeError as exc:
                    failed[k] = exc.reason
                except ValueError as exc:
                    failed[k] = str(exc)
        for k, features in outs:
            array = features.cpu().numpy()
            found[k] = array
            self.cache.put(k, array)
        self.encode_s += time.perf_counter() - start
        return failed

    def has_work(self) -> bool:
        return bool(self.pending)

    def load(self) -> int:
        return len(self.pending)

    def stats(self) -> dict:
        s = self.cache.stats
        return {
            "images": self.num_images,
            "encoder_cache_hits": s.hits,
            "encoder_cache_misses": s.misses,
            "encoder_cache_evictions": s.evictions,
            "encoder_cache_size": len(self.cache),
            "encode_s": self.encode_s,
        }

    def snapshot(self) -> dict:
        """Rows not yet sent (the cache is rebuilt on demand)."""
        return {"pending": list(self.pending)}

    def restore(self, state: dict) -> None:
        self.pending = list(state["pending"])
