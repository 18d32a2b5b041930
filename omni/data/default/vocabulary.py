"""Words and colours shared by the default dataset's images, speech and motion clips."""
from __future__ import annotations

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (240, 220, 40),
    "white": (250, 250, 250), "black": (10, 10, 10), "purple": (140, 50, 170), "orange": (245, 140, 30),
}
