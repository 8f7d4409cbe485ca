"""The OpenAI chat-completions wire format, as vLLM extends it for images and video.

Requests are parsed into pydantic models (what a client may send, with the bounds that make a
value wrong named in the model); responses are plain dicts built by the small functions at the
end. Every error leaves the server as ``{"error": {"message", "type", "param", "code"}}``
(``APIError``), the body OpenAI and vLLM return, with a one-line message.

References: OpenAI's API reference (chat completions, streaming chunks, usage); vLLM's
``entrypoints/openai/protocol.py`` for ``video_url``, ``mm_processor_kwargs``,
``chat_template_kwargs``, ``top_k``/``min_p``/``repetition_penalty`` and ``reasoning_content``.
"""

import time
import uuid
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class APIError(Exception):
    """An error a client gets as OpenAI's error body with ``status``."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
             413: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable",
             500: "server_error"}

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


# -- requests -----------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class URL(BaseModel):
    url: str
    detail: Optional[str] = None  # OpenAI's image detail; the model's own slicing decides here


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: Union[URL, str]


class VideoPart(_Strict):
    type: Literal["video_url"]
    video_url: Union[URL, str]


Part = Union[TextPart, ImagePart, VideoPart]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # name, tool_call_id, ...: accepted and unused

    role: Literal["system", "developer", "user", "assistant"]
    content: Optional[Union[str, List[Part]]] = None
    reasoning_content: Optional[str] = None

    @field_validator("content", mode="before")
    @classmethod
    def _known_parts(cls, value):
        # A clear message for a part type the server does not take (pydantic's union error
        # would list every branch).
        if isinstance(value, list):
            for i, part in enumerate(value):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind not in ("text", "image_url", "video_url"):
                    raise ValueError(f"content[{i}] has type {kind!r}; this server takes 'text', "
                                     "'image_url' and 'video_url' parts")
        return value


class MMProcessorKwargs(_Strict):
    """vLLM's ``mm_processor_kwargs`` under the names the model's processor uses."""

    max_slice_nums: Optional[int] = Field(None, ge=1, le=36)
    downsample_mode: Optional[Literal["16x", "4x"]] = None
    max_num_frames: Optional[int] = Field(None, ge=1)
    fps: Optional[float] = Field(None, gt=0, le=30)
    stack_frames: Optional[int] = Field(None, ge=1, le=5)
    use_image_id: Optional[bool] = None


class ChatTemplateKwargs(BaseModel):
    model_config = ConfigDict(extra="ignore")
    enable_thinking: Optional[bool] = None


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    name: str = "response"
    description: Optional[str] = None
    schema_: Dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JSONSchemaFormat] = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type 'json_schema' needs a 'json_schema' object with a 'schema'")
        return self


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    # Fields this server does not use (user, metadata, store, ...) are accepted and ignored, as
    # OpenAI-compatible servers do, so that existing clients work unchanged.
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: List[Message] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=-1)
    min_p: Optional[float] = Field(None, ge=0, le=1)
    repetition_penalty: Optional[float] = Field(None, gt=0, le=10)
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    logit_bias: Optional[Dict[str, float]] = None
    seed: Optional[int] = None
    stop: Optional[Union[str, List[str]]] = None
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    n: int = 1
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    response_format: Optional[ResponseFormat] = None
    chat_template_kwargs: Optional[ChatTemplateKwargs] = None
    mm_processor_kwargs: Optional[MMProcessorKwargs] = None
    tools: Optional[List[Any]] = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n):
        if n != 1:
            raise ValueError(f"n={n} is not supported: this server returns one choice per request (n=1); "
                             "send the request n times instead")
        return n

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop):
        stops = [stop] if isinstance(stop, str) else (stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, tools):
        if tools:
            raise ValueError("tool calling is not supported by this server; send the request without 'tools'")
        return tools

    @model_validator(mode="after")
    def _logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs=true")
        return self

    @property
    def answer_limit(self) -> Optional[int]:
        return self.max_completion_tokens or self.max_tokens


def validation_error(e: ValidationError) -> APIError:
    """The first problem pydantic found, as one line naming the field."""
    err = e.errors()[0]
    loc = [str(x) for x in err["loc"] if not str(x).startswith(("function-", "tagged-union"))]
    # Drop the union branch names pydantic puts in the location (e.g. "TextPart", "str").
    loc = [x for x in loc if not (x[:1].isupper() or x in ("str", "list[...]", "URL"))]
    param = ".".join(loc) or None
    msg = err["msg"].removeprefix("Value error, ")
    return APIError(400, f"{param}: {msg}" if param else msg, param=param)


def parse_request(data: Any) -> ChatCompletionRequest:
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as e:
        raise validation_error(e) from None


# -- responses ----------------------------------------------------------------------------------
def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def chunk(cid: str, model: str, created: int, delta: dict, finish_reason=None, logprobs=None) -> dict:
    choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]}


def usage_chunk(cid: str, model: str, created: int, usage_: dict) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
            "usage": usage_}


def completion(cid: str, model: str, created: int, content: str, reasoning: Optional[str], finish_reason: str,
               usage_: dict, logprobs=None) -> dict:
    message = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return {"id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}],
            "usage": usage_}


def model_list(name: str, created: int, owner: str = "mlx-minicpmv") -> dict:
    return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": owner}]}


def now() -> int:
    return int(time.time())
