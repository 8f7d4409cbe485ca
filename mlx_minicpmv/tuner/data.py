"""Fine-tuning data: a folder's ``{train,valid,test}.jsonl`` -> token ids, loss masks and media.

One example a line, in the chat form the processor takes (mlx-lm's ``{"messages": [...]}``),
multi-turn allowed, with an optional system message first::

    {"messages": [{"role": "user", "content": [{"type": "image", "image": "shapes/0.png"},
                                               {"type": "text", "text": "Which colour is largest?"}]},
                  {"role": "assistant", "content": "red"}]}

Image and video paths are relative to the data folder. The chat template renders an example
exactly as at inference, thinking off unless an answer carries its thinking (a
``reasoning_content`` or a ``</think>``). With ``mask_prompt`` (the default here) the loss is on
what the model writes: each assistant turn from the end of the generation prompt it would be
written after, through its ``<|im_end|>``.

Every line is checked before training starts; a malformed line, a missing media file or an
example without an answer is an error naming the file and line. An example longer than
``max_seq_length`` is cut from the end with a warning, and skipped with a warning (counted)
where the cut would leave no answer or split an image's placeholders.
"""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import mlx.core as mx
import numpy as np

from ..errors import MediaError
from ..processing import prompt

SPLITS = ("train", "valid", "test")
ROLES = ("system", "user", "assistant")
TURN_END = "<|im_end|>"
MARK = "\ue002"  # where an answer starts or ends in the rendered text (private use: no template writes it)
# Examples whose pixels add up to less than this stay in memory between epochs; beyond it
# each batch reads its media again (a long video run would not fit otherwise).
CACHE_BYTES = 2 << 30


@dataclass
class Example:
    messages: list  # media paths made absolute
    where: str  # "data/train.jsonl line 3", for messages about it


@dataclass
class Encoded:
    ids: np.ndarray  # (L,) int32
    mask: np.ndarray  # (L,) bool: the tokens the loss is on
    media: dict = field(default_factory=dict)  # pixel_values, target_sizes, and the same for videos (numpy)

    @property
    def media_bytes(self) -> int:
        return sum(v.nbytes for v in self.media.values())


@dataclass
class Batch:
    """``B`` examples padded to one length: ids and loss mask (B, L), and their media in the
    processor's layout, each example's after the one before (as ``splice`` reads them)."""

    ids: mx.array
    mask: mx.array
    media: dict
    downsample_mode: Optional[str] = None


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# -- reading and checking -----------------------------------------------------------------------
def read_examples(path: Path) -> List[Example]:
    """The examples of one jsonl file, each line checked (``ValueError`` naming file and line)."""
    examples = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path} line {n}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg}, column {e.colno}); each line must be "
                                 'one object such as {"messages": [...]}') from None
            examples.append(Example(check_messages(record, where, path.parent), where))
    return examples


def check_messages(record, where: str, folder: Path) -> list:
    """The example's messages with media paths resolved against ``folder``, or a ValueError."""
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list) or not record["messages"]:
        raise ValueError(f'{where}: expected an object with a non-empty "messages" list, as '
                         '{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}')
    messages = []
    for k, message in enumerate(record["messages"], start=1):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ValueError(f"{where}: message {k} needs a role of {', '.join(ROLES)}")
        if message["role"] == "system" and k != 1:
            raise ValueError(f"{where}: message {k} is a system message; only the first may be")
        content = message.get("content")
        if isinstance(content, list):
            content = [check_part(part, where, k, folder, message["role"]) for part in content]
        elif not isinstance(content, str):
            raise ValueError(f"{where}: message {k} has no content (a string, or a list of text, image and video parts)")
        messages.append(dict(message, content=content))
    answers = [m for m in messages if m["role"] == "assistant" and text_of(m["content"]).strip()]
    if not answers:
        raise ValueError(f"{where}: no assistant turn with text; each example needs an answer to learn")
    if not any(m["role"] == "user" for m in messages):
        raise ValueError(f"{where}: no user turn; the chat template needs a question before an answer")
    return messages


def check_part(part, where: str, k: int, folder: Path, role: str) -> dict:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return part
    if kind not in ("image", "video") or not isinstance(part.get(kind), str):
        raise ValueError(f'{where}: message {k} has a part that is not {{"type": "text", "text": ...}}, '
                         '{"type": "image", "image": PATH} or {"type": "video", "video": PATH}')
    if role != "user":
        raise ValueError(f"{where}: message {k} ({role}) holds an {kind}; images and videos go in user turns")
    source = part[kind]
    if "://" in source:
        raise ValueError(f"{where}: {kind} {source} is a URL; download it into the data folder and give its path")
    path = (folder / source).expanduser()
    if not path.is_file():
        raise ValueError(f"{where}: {kind} {source} not found (looked for {path}); paths are relative to the data folder")
    return dict(part, **{kind: str(path)})


def text_of(content) -> str:
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def thinks(messages) -> bool:
    """Whether an answer carries thinking: then the template renders it with thinking on."""
    return any(m["role"] == "assistant" and (isinstance(m.get("reasoning_content"), str)
                                             or "</think>" in text_of(m["content"])) for m in messages)


# -- encoding -----------------------------------------------------------------------------------
class ChatEncoder:
    """An example -> ``Encoded``, through the processor's chat template and placeholders."""

    def __init__(self, processor, mask_prompt: bool = True, max_seq_length: int = 2048,
                 warn: Callable[[str], None] = warn, **media_options):
        if TURN_END not in processor.tokenizer.get_vocab():
            raise ValueError(f"the tokenizer has no {TURN_END} token; is this a MiniCPM-V model?")
        self.processor = processor
        self.mask_prompt = mask_prompt
        self.max_seq_length = max_seq_length
        self.warn = warn
        self.media_options = {k: v for k, v in media_options.items() if v is not None}
        tok = processor.tokenizer
        self.pads = [tok.convert_tokens_to_ids(t) for t in (processor.tokens.image, processor.tokens.video)]

    def answer_spans(self, messages, thinking: bool, where: str) -> List[Tuple[int, int]]:
        """Character ranges of the rendered conversation the loss is on, one per answer: from
        where the model starts writing (after the generation prompt, or, in an earlier turn
        that the template renders without its empty thinking, after the role line) through
        the turn's end token."""
        tok = self.processor.tokenizer
        full = prompt.render(tok, messages, thinking, add_generation_prompt=False)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = prompt.render(tok, messages[:i], thinking, add_generation_prompt=False) if i else ""
            header = prompt.render(tok, messages[:i], thinking, add_generation_prompt=True)[len(before):]
            role_line = header[: header.find("\n") + 1]
            if not full.startswith(before) or not role_line or not full.startswith(role_line, len(before)):
                raise ValueError(f"{where}: the chat template renders message {i + 1} differently in the whole "
                                 "conversation than after the turns before it; cannot tell where the answer starts")
            start = len(before) + (len(header) if full.startswith(header, len(before)) else len(role_line))
            end = full.find(TURN_END, start)
            if end < 0:
                raise ValueError(f"{where}: message {i + 1} does not end with {TURN_END} in the chat template")
            spans.append((start, end + len(TURN_END)))
        return spans

    def __call__(self, example: Example) -> Optional[Encoded]:
        """The example's ids and mask (cut to ``max_seq_length``), or None (with a warning) when
        nothing of it can be learnt from within that length."""
        messages, where = example.messages, example.where
        plain = self.processor.plain
        protected = plain.protect(messages)
        if any(MARK in text_of(m["content"]) for m in messages):
            raise ValueError(f"{where}: the text holds the private-use character U+E002; remove it")
        thinking = thinks(messages)
        try:
            spans = self.answer_spans(protected, thinking, where)
            text = prompt.render(self.processor.tokenizer, protected, thinking, add_generation_prompt=False)
            cuts = sorted({p for span in spans for p in span})
            marked = "".join(text[a:b] + MARK for a, b in zip([0] + cuts, cuts)) + text[cuts[-1]:]
            out, expanded, _ = self.processor.expand_media(marked, messages, **self.media_options)
        except MediaError as e:
            raise MediaError(f"{where}: {e}") from None
        except Exception as e:  # the template's raise_exception (jinja) and the processor's checks
            if isinstance(e, ValueError) and str(e).startswith(where):
                raise
            raise ValueError(f"{where}: {str(e).strip().splitlines()[0]}") from None
        # Each piece between marks encoded apart, as at inference the prompt is encoded and
        # the answer written after it: piece k starts at cuts[k - 1], an answer where a span does.
        answers = {cuts.index(a) + 1 for a, _ in spans}
        ids, mask = [], []
        for k, piece in enumerate(expanded.split(MARK)):
            encoded = plain.encode(piece)
            ids += encoded
            mask += [k in answers or not self.mask_prompt] * len(encoded)
        ids, mask = np.asarray(ids, np.int32), np.asarray(mask, bool)
        mask &= ~np.isin(ids, self.pads)  # placeholders are replaced by features: nothing to predict
        media = {k: np.asarray(v) for k, v in out.model_inputs().items()
                 if k != "downsample_mode" and v is not None}
        return self.fit(Encoded(ids, mask, media), where)

    def fit(self, encoded: Encoded, where: str) -> Optional[Encoded]:
        n, limit = len(encoded.ids), self.max_seq_length
        if n <= limit:
            return encoded
        placeholders = np.flatnonzero(np.isin(encoded.ids, self.pads))
        if placeholders.size and placeholders[-1] >= limit:
            self.warn(f"{where}: skipped: {n} tokens, and --max-seq-length {limit} would cut into its images "
                      "or videos; raise --max-seq-length or use fewer frames or slices")
            return None
        if not encoded.mask[1:limit].any():
            self.warn(f"{where}: skipped: {n} tokens, and no answer is left within --max-seq-length {limit}")
            return None
        self.warn(f"{where}: {n} tokens, truncated to --max-seq-length {limit} (its end is not learnt)")
        return Encoded(encoded.ids[:limit], encoded.mask[:limit], encoded.media)


# -- datasets and batches -----------------------------------------------------------------------
class ChatDataset:
    """The usable examples of one split, encoded once up front (so that every error and
    warning comes before training), their media kept in memory when it is small enough."""

    def __init__(self, examples: List[Example], encoder: ChatEncoder, name: str,
                 cache_bytes: int = CACHE_BYTES):
        self.encoder = encoder
        self.name = name
        self.items: List[Tuple[Example, Encoded]] = []
        for example in examples:
            encoded = encoder(example)
            if encoded is not None:
                self.items.append((example, encoded))
        self.skipped = len(examples) - len(self.items)
        if self.skipped:
            encoder.warn(f"{name}: skipped {self.skipped} of {len(examples)} examples (see the warnings above)")
        self.cached = sum(e.media_bytes for _, e in self.items) <= cache_bytes
        if not self.cached:  # ids and masks stay; the media are read again for each batch
            self.items = [(x, Encoded(e.ids, e.mask, dict.fromkeys(e.media))) for x, e in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Encoded:
        example, encoded = self.items[i]
        if self.cached or not encoded.media:
            return encoded
        media = self.encoder(example).media
        return Encoded(encoded.ids, encoded.mask, media)

    def length(self, i: int) -> int:
        return len(self.items[i][1].ids)


def load_datasets(folder, processor, names=SPLITS, **encoder_options) -> dict:
    """``{name: ChatDataset}`` for each split whose file the folder has."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such data folder; it should hold train.jsonl, valid.jsonl and test.jsonl")
    encoder = ChatEncoder(processor, **encoder_options)
    found = {}
    for name in names:
        path = folder / f"{name}.jsonl"
        if path.is_file():
            found[name] = ChatDataset(read_examples(path), encoder, str(path))
    return found


def collate(items: List[Encoded], pad_id: int, downsample_mode: Optional[str] = None) -> Batch:
    length = max(len(e.ids) for e in items)
    ids = np.full((len(items), length), pad_id, np.int32)
    mask = np.zeros((len(items), length), np.float32)
    for j, e in enumerate(items):
        ids[j, : len(e.ids)] = e.ids
        mask[j, : len(e.mask)] = e.mask
    media = {}
    for key, axis in (("pixel_values", -1), ("target_sizes", 0), ("pixel_values_videos", -1), ("target_sizes_videos", 0)):
        parts = [e.media[key] for e in items if key in e.media]
        if parts:
            media[key] = mx.array(np.concatenate(parts, axis=axis))
    return Batch(mx.array(ids), mx.array(mask), media, downsample_mode)


def iterate_batches(dataset: ChatDataset, batch_size: int, loop: bool = False,
                    seed: Optional[int] = None) -> Iterator[Batch]:
    """mlx-lm's batching: examples sorted by length into batches, the batches in a random order
    (``seed``), every epoch (``loop``)."""
    if len(dataset) < batch_size:
        raise ValueError(f"{dataset.name} has {len(dataset)} usable example{'s' * (len(dataset) != 1)}, fewer than "
                         f"--batch-size {batch_size}; add examples or lower --batch-size")
    order = sorted(range(len(dataset)), key=dataset.length)
    batches = [order[i: i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    pad_id = dataset.encoder.processor.tokenizer.convert_tokens_to_ids(TURN_END)
    downsample_mode = dataset.encoder.media_options.get("downsample_mode")
    rng = np.random.default_rng(seed)
    while True:
        for i in rng.permutation(len(batches)):
            yield collate([dataset[j] for j in batches[i]], pad_id, downsample_mode)
        if not loop:
            break
