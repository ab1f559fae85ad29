"""Text and text files become jobs; anything else gets told what the bot accepts."""

from __future__ import annotations

from io import BytesIO

from aiogram import Bot, F, Router
from aiogram.enums import ChatType
from aiogram.types import Document, Message
from aiogram.utils.i18n import gettext as _
from aiogram.utils.i18n import ngettext

from bot.config import MAX_CONTENT_CHARS
from bot.jobs.conversation import Conversations
from bot.jobs.submit import Submitter, cut_notice
from bot.telegram.filters import AddressedToBot
from storage.users import UserRepo

MAX_FILE_BYTES = 1024 * 1024
TEXT_SUFFIXES = (".txt", ".md", ".markdown")
CONTEXT_SEPARATOR = "\n\n"


async def ask(message: Message, request: str, bot: Bot, submitter: Submitter,
              conversations: Conversations, locale: str) -> None:
    """A reply to one of the bot's messages carries that message; any other message, in a
    mode that remembers, the recent conversation."""
    assert message.from_user is not None
    memory = await conversations.memory(message.from_user.id)
    replied = await replied_answer(message, bot)
    notices: list[str] = []
    if replied is None and memory.remembers:
        composed = await conversations.compose(message.chat.id, message.from_user.id, request)
        content, earlier = composed.content, composed.earlier
    else:
        (content, notices), earlier = follow_up(request, replied), 0
    notices = [notice for notice in (cut_notice(len(request)), *notices) if notice]
    await submitter.submit(message, request=request, content=content, locale=locale,
                           mode=memory.mode, notices=notices, earlier=earlier,
                           question=request if replied or earlier else None)


def follow_up(request: str, replied: str | None) -> tuple[str, list[str]]:
    """The content for a reply to `replied` (or for no reply), and what to tell of cuts."""
    content, kept = with_context(request, replied)
    if kept == 0:
        return content, [_("The message you replied to was left out: your text alone fills "
                           "the {limit}-character limit.").format(limit=MAX_CONTENT_CHARS)]
    if kept is not None:
        return content, [ngettext(
            "The message you replied to was shortened to its first {kept} character to fit "
            "the {limit}-character limit.",
            "The message you replied to was shortened to its first {kept} characters to fit "
            "the {limit}-character limit.", kept).format(kept=kept, limit=MAX_CONTENT_CHARS)]
    return content, []


async def replied_answer(message: Message, bot: Bot) -> str | None:
    """The bot's message this one replies to: the context of a follow-up."""
    replied = message.reply_to_message
    if replied is None or replied.from_user is None or replied.from_user.id != bot.id:
        return None
    return replied.text or replied.caption


def with_context(request: str, context: str | None) -> tuple[str, int | None]:
    """The content to send, and how much of the context was kept if it had to be cut."""
    request = request[:MAX_CONTENT_CHARS]
    if not context:
        return request, None
    room = max(0, MAX_CONTENT_CHARS - len(request) - len(CONTEXT_SEPARATOR))
    if room == 0:
        return request, 0  # the request alone fills the budget
    kept = context[:room]
    return kept + CONTEXT_SEPARATOR + request, len(kept) if len(kept) < len(context) else None


async def read_file(message: Message, request: str, bot: Bot, users: UserRepo,
                    submitter: Submitter, locale: str) -> None:
    assert message.from_user is not None and message.document is not None
    if not is_text_file(message.document):
        await message.reply(_("I can read .txt and .md files up to 1 MB. Please send the "
                              "text as such a file or as a message."))
        return
    buffer = BytesIO()
    await bot.download(message.document, destination=buffer)
    text = decode(buffer.getvalue())
    content = f"{request}{CONTEXT_SEPARATOR}{text}" if request else text
    notices = []
    if len(content) > MAX_CONTENT_CHARS:
        notices.append(ngettext(
            "The file and caption have {length} character; only the first {limit} will be "
            "processed.",
            "The file and caption have {length} characters; only the first {limit} will be "
            "processed.", len(content)).format(length=len(content), limit=MAX_CONTENT_CHARS))
    name = message.document.file_name or ""
    await submitter.submit(message, request=request + text, content=content, locale=locale,
                           notices=notices, mode=await users.mode(message.from_user.id),
                           question=f"📎 {name} {request}".strip())


def is_text_file(document: Document) -> bool:
    name = (document.file_name or "").lower()
    return name.endswith(TEXT_SUFFIXES) and (document.file_size or 0) <= MAX_FILE_BYTES


def decode(data: bytes) -> str:
    """UTF-8 (with or without a BOM) if it is valid, else Windows-1251, common in Russia."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1251", errors="replace")


async def not_text(message: Message) -> None:
    await message.reply(_("I understand only text messages. Please send your request as "
                          "text (up to {limit} characters).").format(limit=MAX_CONTENT_CHARS))


def make_router() -> Router:
    router = Router(name="chat")
    router.message.register(ask, F.text & ~F.text.startswith("/"), AddressedToBot())
    router.message.register(read_file, F.document, AddressedToBot())
    router.message.register(not_text, F.chat.type == ChatType.PRIVATE, ~F.text)
    return router
