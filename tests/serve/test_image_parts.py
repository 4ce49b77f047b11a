"""Chat `image_url` content parts: `data:` URLs with base64 PNG/JPEG become the request's
images (a placeholder in the text each); anything else is a 400 naming the part. Checked on
the request preparation (no Ray): the prompt that reaches the graph and the errors."""

from __future__ import annotations

import base64
import re

import pytest

from tideflow.serve.errors import APIError
from tideflow.serve.model_info import ModelInfo
from tideflow.serve.prepare import prepare_chat
from tideflow.serve.protocol import ChatCompletionRequest

from tests.testing.llava_reference import make_image, png


@pytest.fixture(scope="module")
def llava(tiny_model_dir):
    path = tiny_model_dir("llava")
    return ModelInfo.load("llava", path)


def _jpeg(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def _url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def _chat(*parts, max_tokens: int = 8) -> ChatCompletionRequest:
    content = [{"type": "text", "text": p} if isinstance(p, str) else {"type": "image_url", "image_url": {"url": p[0]}}
               for p in parts]
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0}
    return ChatCompletionRequest.model_validate(body, strict=True)


def test_data_urls_become_images_in_the_prompt(llava):
    a, b = png(make_image(1)), _jpeg(make_image(2))
    prep = prepare_chat(_chat("Compare", (_url(a),), (_url(b, "image/jpeg"),)), llava)
    prompt = prep.prompts[0]
    assert prompt["messages"] == [{"role": "user", "content": "Compare\n<image>\n<image>"}]
    assert prompt["multi_modal_data"] == {"image": [a, b]}
    text_only = len(llava.chat_ids(prompt["messages"]))
    assert prep.num_prompt_tokens == [text_only + 2 * (llava.tokens_per_image - 1)]
    assert llava.tokens_per_image == 16 and llava.image_token == "<image>"


def test_context_length_counts_the_expanded_images(llava):
    many = [(_url(png(make_image(3))),)] * 60  # 60 images x 16 tokens > the 1024-token context
    with pytest.raises(APIError) as err:
        prepare_chat(_chat("x", *many), llava)
    assert err.value.status == 400 and err.value.code == "context_length_exceeded"


@pytest.mark.parametrize(
    "url,needle",
    [
        ("https://example.com/cat.png", "must be a data: URL .* fetching https URLs is not supported"),
        ("data:image/png;base64,@@not base64@@", "holds invalid base64 data"),
        ("data:image/png,rawbytes", "must be base64-encoded"),
        ("data:text/plain;base64,aGk=", "media type 'text/plain'"),
        ("data:image/png;base64," + base64.b64encode(b"not an image").decode(), "is not an image Pillow can read"),
        ("data:image/png;base64", "no ','"),
    ],
    ids=["http", "bad-base64", "not-base64", "not-image-type", "not-an-image", "no-comma"],
)
def test_bad_image_urls_are_400_naming_the_part(llava, url, needle):
    with pytest.raises(APIError) as err:
        prepare_chat(_chat("look", (url,)), llava)
    assert err.value.status == 400 and err.value.param == "messages"
    assert err.value.message.startswith("'messages[0].content[1].image_url.url'")
    assert re.search(needle, err.value.message), err.value.message


def test_text_model_rejects_images(tiny_model_dir):
    info = ModelInfo.load("llama", tiny_model_dir("llama"))
    with pytest.raises(APIError) as err:
        prepare_chat(_chat((_url(png(make_image(4))),), "what is it?"), info)
    assert err.value.status == 400 and "messages[0].content[0].image_url" in err.value.message
    assert "takes no images" in err.value.message


def test_unknown_part_type_is_400(llava):
    body = {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}], "max_tokens": 4}
    with pytest.raises(APIError) as err:
        prepare_chat(ChatCompletionRequest.model_validate(body, strict=True), llava)
    assert err.value.status == 400 and "messages[0].content[0]" in err.value.message
