"""A real browser for the report's tests: headless Chromium (Debian's ``chromium``), and
a small PNG reader (zlib only) to look at its screenshots.

Chromium is found on the PATH: a test without it is skipped, but fails when ``CI`` is
set (``.ci/run`` installs it). Each call runs one Chromium process with a profile of its
own in a temporary directory, and waits for it to end.
"""

from __future__ import annotations

import html.parser
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

from tests.helpers import finish, require

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--hide-scrollbars",
)  # fmt: skip


def chromium(*args: str, timeout: float = 60) -> str:
    """Run headless Chromium with ``args``; its stdout."""
    path = require("chromium", "chromium")
    with tempfile.TemporaryDirectory(prefix="fanout-chromium-") as profile:
        proc = subprocess.Popen(
            [path, *FLAGS, f"--user-data-dir={profile}", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # its own chatter (D-Bus, GPU) is not ours
            text=True,
        )
        out, _ = finish(proc, timeout)
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}"
    return str(out)


def dump_dom(page: Path, fragment: str = "", budget_ms: int = 10000) -> str:
    """The page's DOM once its script has run (``--virtual-time-budget``)."""
    return chromium(f"--virtual-time-budget={budget_ms}", "--dump-dom", page.as_uri() + fragment)


def screenshot(page: Path, png: Path, size: tuple[int, int] = (1000, 560)) -> Path:
    chromium("--virtual-time-budget=5000", f"--window-size={size[0]},{size[1]}",
             f"--screenshot={png}", page.as_uri())  # fmt: skip
    return png


class Elements(html.parser.HTMLParser):
    """Every element's attributes and text, by id (and all of them, in order)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str]] = {}
        self.all: list[tuple[str, dict[str, str]]] = []
        self.texts: dict[str, list[str]] = {}
        self.open: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.all.append((tag, values))
        if "id" in values:
            self.by_id[values["id"]] = values
            self.texts[values["id"]] = []
            self.open.append(values["id"])
        else:
            self.open.append("")

    def handle_endtag(self, tag: str) -> None:
        if self.open:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        for name in self.open:
            if name:
                self.texts[name].append(data)

    def text(self, element_id: str) -> str:
        return "".join(self.texts[element_id]).strip()


def pixels(png: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and the rows of an 8-bit RGB or RGBA PNG, as RGB bytes."""
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, [], 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert (depth, interlace) == (8, 0), (depth, interlace)
            assert colour in (2, 6), colour
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        row = _unfilter(line[0], bytearray(line[1:]), prev, bpp)
        rows.append(bytes(row) if bpp == 3 else bytes(b for i, b in enumerate(row) if i % 4 != 3))
        prev = row
    return width, height, rows


def _unfilter(kind: int, row: bytearray, prev: bytearray, bpp: int) -> bytearray:
    n = len(row)
    if kind == 1:  # Sub
        for i in range(bpp, n):
            row[i] = (row[i] + row[i - bpp]) & 255
    elif kind == 2:  # Up
        row = bytearray((a + b) & 255 for a, b in zip(row, prev, strict=True))
    elif kind == 3:  # Average
        for i in range(n):
            left = row[i - bpp] if i >= bpp else 0
            row[i] = (row[i] + ((left + prev[i]) >> 1)) & 255
    elif kind == 4:  # Paeth
        for i in range(n):
            a = row[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    return row


def colours(png: Path) -> set[tuple[int, int, int]]:
    """The distinct colours of a screenshot."""
    _, _, rows = pixels(png)
    found: set[tuple[int, int, int]] = set()
    for row in rows:
        found.update(zip(row[0::3], row[1::3], row[2::3], strict=True))
    return found


def rgb(hex_colour: str) -> tuple[int, int, int]:
    value = int(hex_colour.lstrip("#"), 16)
    return value >> 16, (value >> 8) & 255, value & 255
