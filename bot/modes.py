"""The API's modes, in the order the spec lists them: the one list the bot, the fake
chatinfo server and the tests read.

Labels and descriptions are English message ids, translated where they are shown.
`remembers`: whether a new message carries the recent conversation by default (each user
can turn it on or off per mode with /memory). On for the modes one talks with; off for
those that work on the text sent, where earlier messages would be worked on too.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiogram.utils.i18n import lazy_gettext as __
from babel.support import LazyProxy


@dataclass(frozen=True)
class Mode:
    name: str
    emoji: str
    label: LazyProxy
    description: LazyProxy
    remembers: bool = False


MODES: tuple[Mode, ...] = (
    Mode("chat", "💬", __("Chat"), __("An ordinary conversation: ask anything."),
         remembers=True),
    Mode("shorter", "✂️", __("Shorten"), __("Makes your text shorter.")),
    Mode("continue", "➡️", __("Continue"), __("Continues your text.")),
    Mode("names", "🏷", __("Names"), __("Suggests names and titles.")),
    Mode("task", "🧮", __("Solve a task"), __("Solves a problem step by step."),
         remembers=True),
    Mode("text", "📝", __("Fiction"), __("Writes a piece of fiction.")),
    Mode("poems", "🎭", __("Poems"), __("Writes a poem.")),
    Mode("books_list", "📚", __("Reading list"), __("Compiles a list of literature.")),
    Mode("song_text", "🎵", __("Song"), __("Writes song lyrics.")),
    Mode("summary", "🧾", __("Takeaways"), __("Draws the conclusions from your text.")),
    Mode("paper", "📑", __("Paper"), __("Writes a school or college paper.")),
    Mode("report", "🎤", __("Report"), __("Writes a report to present.")),
    Mode("originality", "🧬", __("Originality"), __("Raises the uniqueness of your text.")),
    Mode("rewrite", "🔁", __("Rewrite"), __("Rewrites your text in other words.")),
    Mode("essay", "🖋", __("Essay"), __("Writes an essay.")),
    Mode("plan", "🗓", __("Content plan"), __("Makes a content plan.")),
    Mode("post", "📣", __("Social post"), __("Writes a post for social media.")),
    Mode("code", "💻", __("Code"), __("Writes program code."), remembers=True),
    Mode("synopsis", "🗒", __("Synopsis"), __("Makes lecture notes of your text.")),
    Mode("story", "📖", __("Story"), __("Writes a story.")),
    Mode("article", "📰", __("Article"), __("Writes an article.")),
    Mode("answer", "❓", __("Answer"), __("Answers a question."), remembers=True),
)
MODES_BY_NAME: dict[str, Mode] = {mode.name: mode for mode in MODES}
DEFAULT_MODE = "chat"
