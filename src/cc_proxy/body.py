"""A Messages request body: checked whole, decoded only where it is read.

A Claude Code request is 76 KB and more (63 KB of it tool definitions) and grows with
the conversation. The gateway must reject one that is not a JSON object (SPEC.md §4), but
it reads only a few of its fields: `model` and `stream` always, `system` and `messages`
for some shaping rules, the rest for traces. So the body is validated in one pass that
keeps each top-level value as the client's bytes (msgspec's `Raw`), values are decoded
when first read, and a reshaped body is written back from those bytes with only the
changed fields encoded. Measured on the recorded Claude Code request as the CLI sends it
(compact UTF-8): 35 µs to check and split it, 79 with the UTF-8 check, against 116 µs for
a full decode plus 21 µs to encode it again, and none of the thousands of objects a full
decode makes for the collector to walk while the answer streams. The UTF-8 check of the
tool definitions, the same in every request of a session, is made once (`Utf8Checked`:
143 against 80 µs a request, measured side by side on a busier day).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import Any

import msgspec
import orjson

from cc_proxy.errors import ErrorType, GatewayError

_FIELDS = msgspec.json.Decoder(dict[str, msgspec.Raw])
# The Messages API's fields as they open a member of the written body.
_KEYS = {
    key: orjson.dumps(key) + b":"
    for key in (
        "model", "messages", "system", "max_tokens", "stream", "tools", "tool_choice",
        "metadata", "temperature", "top_p", "top_k", "stop_sequences", "thinking",
        "context_management", "service_tier", "container", "mcp_servers",
    )
}  # fmt: skip


# The UTF-8 check decodes a body in pieces of about this size. One character beyond
# U+FFFF (Claude Code's tool descriptions have an emoji) makes a whole decoded str four
# bytes a character: the 76 KB Claude Code request took 263 µs to decode whole, 69 in
# pieces, where only the piece with the emoji pays for it.
UTF8_PIECE = 16 * 1024


def check_utf8(raw: bytes, piece: int = UTF8_PIECE) -> None:
    """Raises UnicodeDecodeError, as `raw.decode()` would, unless `raw` is UTF-8.

    Each piece ends just before a quote: an ASCII byte is a character of its own in
    UTF-8, so a cut there never splits a valid character, and a character cut short
    there is invalid in the whole as in the piece."""
    start, end = 0, len(raw)
    while start < end:
        cut = raw.find(b'"', start + piece) if start + piece < end else -1
        if cut < 0:
            cut = end
        part = raw[start:cut]
        if not part.isascii():
            try:
                part.decode()
            except UnicodeDecodeError as exc:
                raise UnicodeDecodeError(
                    exc.encoding, raw, start + exc.start, start + exc.end, exc.reason
                ) from None
        start = cut


class Utf8Checked:
    """Checks field values as UTF-8, remembering the large ones found to be so.

    Claude Code sends the same tool definitions in every request of a session: 63 KB of
    the recorded 76 KB request, with most of its non-ASCII characters. A value equal to
    one already checked (a memcmp) needs no decode: measured by instruction count, the
    check of the recorded request went from 431 k to a few k, an eighth of all the
    gateway spends on it. A value is remembered by its field and length, at most
    `capacity` of them, the oldest forgotten first."""

    __slots__ = ("_capacity", "_checked", "_min_remembered")

    def __init__(self, capacity: int = 16, min_remembered: int = 4096) -> None:
        self._capacity = capacity
        # A smaller value is decoded about as quickly as it is compared.
        self._min_remembered = min_remembered
        self._checked: dict[tuple[str, int], bytes] = {}

    def __len__(self) -> int:
        return len(self._checked)

    def check(self, field: str, value: bytes) -> None:
        """Raises UnicodeDecodeError, as `value.decode()` would, unless it is UTF-8."""
        if value.isascii():
            return
        if len(value) < self._min_remembered:
            check_utf8(value)
            return
        slot = (field, len(value))
        if self._checked.get(slot) == value:
            return
        check_utf8(value)
        self._checked.pop(slot, None)  # to the back of the line
        self._checked[slot] = value
        if len(self._checked) > self._capacity:
            del self._checked[next(iter(self._checked))]


_UTF8_CHECKED = Utf8Checked()


def _invalid(reason: str) -> GatewayError:
    return GatewayError(400, ErrorType.INVALID_REQUEST, reason)


class MessagesBody(Mapping[str, Any]):
    """The client's body as a read-only mapping; `raw` is its bytes, unchanged."""

    __slots__ = ("_fields", "_values", "raw")

    def __init__(self, raw: bytes) -> None:
        """Raises a 400 `GatewayError` for a body that is not a JSON object."""
        try:
            fields = _FIELDS.decode(raw)
        except msgspec.ValidationError:
            # Not an object: name what it is, or why it is not JSON at all.
            try:
                kind = type(orjson.loads(raw)).__name__
            except orjson.JSONDecodeError as exc:
                raise _invalid(f"request body is not valid JSON: {exc}") from None
            raise _invalid(f"request body must be a JSON object, not {kind}") from None
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # the latter: in a key
            raise _invalid(f"request body is not valid JSON: {exc}") from None
        except RecursionError:
            # msgspec walks nested values by recursion; orjson stops at 1024 levels.
            raise _invalid("request body is not valid JSON: nested too deeply") from None
        # Strings kept as bytes were not decoded, so not checked as UTF-8 either. The keys
        # were, and what lies between the values is JSON's own ASCII: the values are all
        # that is left to check.
        if not raw.isascii():
            for key, value in fields.items():
                try:
                    _UTF8_CHECKED.check(key, bytes(value))
                except UnicodeDecodeError as exc:
                    raise _invalid(f"request body is not valid JSON: {key}: {exc}") from None
        self.raw = raw
        self._fields = fields
        self._values: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            value = self._values[key] = orjson.loads(memoryview(self._fields[key]))
            return value

    def get(self, key: str, default: Any = None) -> Any:
        # Mapping's own `get` goes through __getitem__ and a KeyError for every miss.
        return self[key] if key in self._fields else default

    def __contains__(self, key: object) -> bool:
        return key in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def field_bytes(self, key: str) -> msgspec.Raw:
        """A field's value as the client wrote it."""
        return self._fields[key]

    def raw_fields(self) -> Mapping[str, msgspec.Raw]:
        """Every field's value as the client wrote it, in the client's order."""
        return self._fields


class ShapedBody(Mapping[str, Any]):
    """A body with some fields replaced, added or removed; `encode` writes it out, the
    unchanged fields as their original bytes when the base is a `MessagesBody`.

    A change given as `msgspec.Raw` is JSON already: it is written as it is, and decoded
    only if read."""

    __slots__ = ("_base", "_changes", "_decoded", "_dropped")

    def __init__(
        self, base: Mapping[str, Any], changes: Mapping[str, Any], dropped: Collection[str]
    ) -> None:
        self._base = base
        self._changes = changes
        self._dropped = frozenset(dropped)
        self._decoded: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key in self._dropped:
            raise KeyError(key)
        if key in self._changes:
            value = self._changes[key]
            if not isinstance(value, msgspec.Raw):
                return value
            if key not in self._decoded:
                self._decoded[key] = orjson.loads(memoryview(value))
            return self._decoded[key]
        return self._base[key]

    def __iter__(self) -> Iterator[str]:
        for key in self._base:
            if key not in self._dropped:
                yield key
        for key in self._changes:
            if key not in self._base and key not in self._dropped:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def encode(self) -> bytes:
        base, changes, dropped = self._base, self._changes, self._dropped
        if not isinstance(base, MessagesBody):
            return exact_dumps(dict(self))
        parts: list[bytes | msgspec.Raw] = []
        fields = base.raw_fields()
        for key, original in fields.items():
            if key in dropped:
                continue
            json = _as_json(changes[key]) if key in changes else original
            parts += (b",", _KEYS.get(key) or _key(key), json)
        for key, value in changes.items():
            if key not in fields and key not in dropped:
                parts += (b",", _KEYS.get(key) or _key(key), _as_json(value))
        if not parts:
            return b"{}"
        parts[0] = b"{"
        parts.append(b"}")
        return b"".join(parts)  # Raw is a buffer: its bytes are copied once, here


def _key(key: str) -> bytes:
    return orjson.dumps(key) + b":"


def _as_json(value: Any) -> bytes | msgspec.Raw:
    """A change as JSON: one given as `msgspec.Raw` is JSON already."""
    return value if isinstance(value, msgspec.Raw) else orjson.dumps(value)


def exact_dumps(body: Mapping[str, Any]) -> bytes:
    """`body` as JSON bytes of their exact size. orjson's bytes keep the capacity of its
    write buffer (262 KB for a 76 KB Claude Code body), and an upstream-bound body is held
    while the answer streams, for minutes."""
    return bytes(memoryview(orjson.dumps(body)))
