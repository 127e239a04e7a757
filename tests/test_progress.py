"""Progress bars: drawn on a terminal, silent on files and pipes, never changing the items."""

import io

from motfm.progress import is_terminal, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_is_drawn_on_a_terminal_only():
    log = io.StringIO()
    assert list(progress(range(5), desc="sample", unit="batch", stream=log)) == list(range(5))
    assert log.getvalue() == ""

    tty = Terminal()
    items = progress(iter(range(3)), desc="sample", unit="batch", total=3, leave=True, stream=tty)
    assert list(items) == [0, 1, 2]
    assert "sample" in tty.getvalue() and "3/3" in tty.getvalue()


def test_is_terminal_on_odd_streams():
    closed = io.StringIO()
    closed.close()
    assert not is_terminal(closed)
    assert not is_terminal(None)
    assert not is_terminal(object())
    assert is_terminal(Terminal())
