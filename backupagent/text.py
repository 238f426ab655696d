"""Text from the network, made safe to show: no terminal escapes, no crash on bytes."""

from __future__ import annotations

_SURROGATE_BYTES = range(0xDC80, 0xDD00)  # bytes kept by the "surrogateescape" decoder


def printable(text: str, keep: str = "\n") -> str:
    """`text` with control characters (ESC, CR and the rest of C0 and C1, DEL) and
    undecodable bytes shown as `\\x1b`-style escapes, so that what a server sent can
    neither drive the terminal nor break a UTF-8 stream. Characters in `keep` stay."""
    if text.isprintable() and not any(c in text for c in "\x1b"):
        return text
    out = []
    for char in text:
        code = ord(char)
        if char in keep:
            out.append(char)
        elif code in _SURROGATE_BYTES:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code < 0xE000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)
