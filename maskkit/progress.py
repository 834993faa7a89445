"""The progress callback every long library call takes: (phase, done, total). The CLI turns it into a rich
progress bar; scripts may pass their own or None."""

from typing import Callable

Progress = Callable[[str, int, int], None]
