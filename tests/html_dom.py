"""Reading an HTML page in tests: each element's tag and attributes, and the text of each element
with an id (the pages under test and what headless Chromium makes of them)."""

from __future__ import annotations

from html.parser import HTMLParser


class Dom(HTMLParser):
    """Each element's tag and attributes, and the text inside each element that has an id."""

    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"})

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: dict[str, str] = {}
        self._open: list[tuple[str, str]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        self.elements.append((tag, attributes))
        if tag not in self.VOID:
            self._open.append((tag, attributes.get("id", "")))
            self.text.setdefault(attributes.get("id", ""), "")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {name: value or "" for name, value in attrs}))

    def handle_endtag(self, tag: str) -> None:
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        for _, identifier in self._open:
            if identifier:
                self.text[identifier] += data

    def all(self, tag: str, attribute: str) -> list[dict[str, str]]:
        return [attributes for name, attributes in self.elements if name == tag and attribute in attributes]
